// Causal self-attention from C++17 with attn/attn.hpp: wrap std::vector
// memory (no copy), describe, plan once, execute. Build against an installed
// libattn:
//   c++ -std=c++17 causal_attention.cpp $(pkg-config --cflags --libs attn)
// or in CMake: find_package(attn CONFIG REQUIRED) + target_link_libraries(... attn::attn).
#include <attn/attn.hpp>

#include <cmath>
#include <cstdio>
#include <vector>

int main() {
  constexpr std::int64_t B = 1, H = 2, S = 8, D = 4;
  std::vector<float> q(B * H * S * D), k(q.size()), v(q.size()), out(q.size());
  for (std::size_t i = 0; i < q.size(); i++) {
    q[i] = std::sin(0.1f * static_cast<float>(i));
    k[i] = std::cos(0.2f * static_cast<float>(i));
    v[i] = static_cast<float>(i % 5);
  }
  try {
    attn::context ctx;  // threads: $ATTN_NUM_THREADS or the online cores
    auto tq = attn::tensor::wrap(ctx, attn::span<float>(q), {B, H, S, D});
    auto tk = attn::tensor::wrap(ctx, attn::span<float>(k), {B, H, S, D});
    auto tv = attn::tensor::wrap(ctx, attn::span<float>(v), {B, H, S, D});
    auto to = attn::tensor::wrap(ctx, attn::span<float>(out), {B, H, S, D});
    attn::desc d(ctx);
    d.causal(ATTN_CAUSAL_TOP_LEFT);
    attn::plan p(ctx, d, tq, tk, tv, to);  // validated once
    p.execute(tq, tk, tv, to);             // no allocation from here on
    std::printf("libattn %s: out[0][0][%lld] = %.4f\n", attn::version().c_str(),
                static_cast<long long>(S - 1), static_cast<double>(out[(S - 1) * D]));
  } catch (const attn::error &e) {
    std::fprintf(stderr, "%s\n", e.what());  // status, function and the bad argument
    return 1;
  }
  return 0;
}
