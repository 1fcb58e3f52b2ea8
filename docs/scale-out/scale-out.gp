# Ring attention per-step times: compute (from the measured per-rank kernel
# rate) against passing one K/V block over 25 and 100 Gb/s links, with the
# measured per-step times at np 2..4 (bench/scale_out.py writes the .dat
# files and runs this from docs/scale-out/). Where a link's line lies below
# the compute line, the ring hides it.
set terminal pngcairo size 900,600 noenhanced font ",11"
set output "scale-out.png"
set logscale xy
set xlabel "tokens per rank n = S/N  (f32, B=1, H=H_kv=8, d=64)"
set ylabel "time per ring step (ms)"
set key top left
set grid
set xrange [16:1048576]
set title "Ring attention: compute per step vs K/V transfer per step"
# measured.dat holds only its header until bench/scale_out.py has measured.
have_measured = int(system("grep -vc '^#' measured.dat || true")) > 0
plot "model.dat" using 1:2 with lines lw 2 lc rgb "#1f77b4" title "compute, model (4·H·n²·d / R)", \
     "model.dat" using 1:3 with lines lw 1 dt 2 lc rgb "#1f77b4" title "compute, causal zig-zag (half)", \
     "model.dat" using 1:6 with lines lw 2 dt 4 lc rgb "#17becf" title "compute, a 32-core node (32·R)", \
     "model.dat" using 1:4 with lines lw 2 lc rgb "#d62728" title "K/V over 25 Gb/s (2·H_kv·n·d·4 B)", \
     "model.dat" using 1:5 with lines lw 2 lc rgb "#ff7f0e" title "K/V over 100 Gb/s", \
     (have_measured ? "measured.dat" : "model.dat") using 2:((have_measured && $3 == 0) ? $4 : 1/0) \
        with points pt 7 ps 1.5 lc rgb "#2ca02c" title "measured ms/step, np 2..4", \
     (have_measured ? "measured.dat" : "model.dat") using 2:((have_measured && $3 == 1) ? $4 : 1/0) \
        with points pt 5 ps 1.5 lc rgb "#9467bd" title "measured ms/step, causal np 2"
