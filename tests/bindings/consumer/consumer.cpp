// C++17 consumer of an installed libattn through attn/attn.hpp (pkg-config and
// find_package builds, -std=c++17 -Wall -Wextra -Werror). Checks results
// against naive loops written here, errors as exceptions and as result<T>,
// and that the handles are move-only. Exit 0 = all good.
#include <attn/attn.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <type_traits>
#include <vector>

static_assert(!std::is_copy_constructible<attn::context>::value, "move-only");
static_assert(!std::is_copy_assignable<attn::tensor>::value, "move-only");
static_assert(!std::is_copy_constructible<attn::plan>::value, "move-only");
static_assert(!std::is_copy_constructible<attn::kvcache>::value, "move-only");
static_assert(!std::is_copy_constructible<attn::mha>::value, "move-only");
static_assert(std::is_nothrow_move_constructible<attn::desc>::value, "movable");
static_assert(std::is_nothrow_move_assignable<attn::kvcache_plan>::value, "movable");

namespace {
int failures = 0;
void expect(bool ok, const char *what) {
  if (!ok) {
    std::fprintf(stderr, "consumer_cpp: FAILED: %s\n", what);
    failures++;
  }
}

constexpr std::int64_t B = 1, H = 2, S = 6, D = 4;

// out[h][i] = sum_j softmax_j(q_i.k_j / sqrt(D)) v_j over j <= i + off (off = -1: no mask)
std::vector<double> naive(const std::vector<double> &q, const std::vector<double> &k,
                          const std::vector<double> &v, std::int64_t sq, std::int64_t sk,
                          std::int64_t off) {
  std::vector<double> out(static_cast<std::size_t>(H * sq * D), 0.0);
  for (std::int64_t h = 0; h < H; h++)
    for (std::int64_t i = 0; i < sq; i++) {
      std::vector<double> s(static_cast<std::size_t>(sk));
      double m = -INFINITY, l = 0.0;
      std::int64_t last = off < 0 ? sk - 1 : i + off;
      for (std::int64_t j = 0; j <= last; j++) {
        double dot = 0.0;
        for (std::int64_t d = 0; d < D; d++)
          dot += q[static_cast<std::size_t>((h * sq + i) * D + d)] *
                 k[static_cast<std::size_t>((h * sk + j) * D + d)];
        s[static_cast<std::size_t>(j)] = dot / std::sqrt(static_cast<double>(D));
        m = std::fmax(m, s[static_cast<std::size_t>(j)]);
      }
      for (std::int64_t j = 0; j <= last; j++) l += std::exp(s[static_cast<std::size_t>(j)] - m);
      for (std::int64_t j = 0; j <= last; j++)
        for (std::int64_t d = 0; d < D; d++)
          out[static_cast<std::size_t>((h * sq + i) * D + d)] +=
              std::exp(s[static_cast<std::size_t>(j)] - m) / l *
              v[static_cast<std::size_t>((h * sk + j) * D + d)];
    }
  return out;
}

double max_err(const std::vector<double> &a, const std::vector<double> &b) {
  double e = 0.0;
  for (std::size_t i = 0; i < a.size(); i++) e = std::fmax(e, std::fabs(a[i] - b[i]));
  return e;
}
}  // namespace

int main() {
  const std::size_t n = static_cast<std::size_t>(B * H * S * D);
  std::vector<double> q(n), k(n), v(n), out(n, 7.0);
  for (std::size_t i = 0; i < n; i++) {
    q[i] = std::sin(0.7 * static_cast<double>(i));
    k[i] = std::cos(0.3 * static_cast<double>(i));
    v[i] = 0.05 * static_cast<double>(i % 11) - 0.2;
  }
  expect(attn::version() == attn_version_string(), "version()");

  attn::context ctx(2);
  expect(ctx.num_threads() == 2, "context(2) has 2 threads");
  auto tq = attn::tensor::wrap(ctx, attn::span<double>(q), {B, H, S, D});
  auto tk = attn::tensor::wrap(ctx, attn::span<double>(k), {B, H, S, D});
  auto tv = attn::tensor::wrap(ctx, attn::span<double>(v), {B, H, S, D});
  auto to = attn::tensor::wrap(ctx, attn::span<double>(out), {B, H, S, D});
  expect(tq.data() == q.data(), "wrap does not copy");
  expect(tq.dtype() == ATTN_DTYPE_F64 && tq.rank() == 4 && tq.dim(2) == S, "tensor accessors");

  // 1. causal attention through desc + plan, against the naive loops.
  attn::desc d(ctx);
  d.causal(ATTN_CAUSAL_TOP_LEFT).scale(1.0 / std::sqrt(static_cast<double>(D)));
  attn::plan p(ctx, d, tq, tk, tv, to);
  p.execute(tq, tk, tv, to);
  expect(max_err(out, naive(q, k, v, S, S, 0)) < 1e-12, "causal plan == naive");

  // Moving a plan keeps it working; the moved-from handle is empty.
  attn::plan p2 = std::move(p);
  expect(p.get() == nullptr && p2.get() != nullptr, "move empties the source");
  std::fill(out.begin(), out.end(), 0.0);
  p2.execute(tq, tk, tv, to);
  expect(max_err(out, naive(q, k, v, S, S, 0)) < 1e-12, "moved plan == naive");

  // 2. errors: exception with status + message naming the argument; nothing written.
  std::vector<double> small(static_cast<std::size_t>(B * H * (S - 1) * D));
  auto tsmall = attn::tensor::wrap(ctx, attn::span<double>(small), {B, H, S - 1, D});
  std::fill(out.begin(), out.end(), 7.0);
  bool threw = false;
  try {
    attn::desc plain(ctx);
    attn::forward(ctx, plain, tq, tk, tsmall, to);
  } catch (const attn::error &e) {
    threw = e.status() == ATTN_ERR_SHAPE && e.function() == "attn_forward" &&
            e.message().find('v') != std::string::npos;
    if (!threw) std::fprintf(stderr, "unexpected error: %s\n", e.what());
  }
  expect(threw, "attn::error(ATTN_ERR_SHAPE) naming v");
  expect(out[0] == 7.0, "no output written on error");
  // ... and as a result<T>, without exceptions.
  auto bad = attn::tensor::make_wrap(ctx, attn::span<double>(small), {B, H, S, D});
  expect(!bad.ok() && bad.error().status == ATTN_ERR_SHAPE, "span shorter than the shape");
  attn::desc d2(ctx);
  auto r = d2.try_window(-2, 0);
  expect(!r.ok() && r.error().status == ATTN_ERR_INVALID_ARG, "try_window(-2) fails");
  auto rp = attn::plan::make(ctx, d2, tq, tk, tsmall, to);
  expect(!rp.ok() && rp.error().status == ATTN_ERR_SHAPE, "plan::make reports, not throws");

  // 3. KV cache: append all keys, attend the last 2 queries bottom-right.
  attn_kvcache_config cfg;
  attn_kvcache_config_init(&cfg);
  cfg.batch = B;
  cfg.heads_kv = H;
  cfg.capacity = 16;
  cfg.d_k = D;
  cfg.dtype = ATTN_DTYPE_F64;
  attn::kvcache cache(ctx, cfg);
  cache.append(tk, tv);
  expect(cache.length(0) == S, "cache length");
  const std::int64_t nq = 2;
  std::vector<double> q2(static_cast<std::size_t>(B * H * nq * D)), out2(q2.size());
  for (std::int64_t h = 0; h < H; h++)
    for (std::int64_t i = 0; i < nq * D; i++)
      q2[static_cast<std::size_t>(h * nq * D + i)] =
          q[static_cast<std::size_t>(h * S * D + (S - nq) * D + i)];
  auto tq2 = attn::tensor::wrap(ctx, attn::span<double>(q2), {B, H, nq, D});
  auto to2 = attn::tensor::wrap(ctx, attn::span<double>(out2), {B, H, nq, D});
  attn::desc dc(ctx);
  dc.causal(ATTN_CAUSAL_BOTTOM_RIGHT);
  attn::kvcache_plan kp = cache.plan(&dc, tq2, to2);
  kp.execute(tq2, to2);
  expect(max_err(out2, naive(q2, k, v, nq, S, S - nq)) < 1e-12, "kv cache == naive bottom-right");

  // 4. multi-head layer: identity projections, no bias -> plain attention per head.
  const std::int64_t E = H * D;
  std::vector<double> eye(static_cast<std::size_t>(E * E), 0.0), win(static_cast<std::size_t>(3 * E * E));
  for (std::int64_t i = 0; i < E; i++) eye[static_cast<std::size_t>(i * E + i)] = 1.0;
  for (int part = 0; part < 3; part++)
    std::copy(eye.begin(), eye.end(), win.begin() + part * E * E);
  auto tw = attn::tensor::wrap(ctx, attn::span<double>(win), {3 * E, E});
  auto two = attn::tensor::wrap(ctx, attn::span<double>(eye), {E, E});
  attn_mha_config mc;
  attn_mha_config_init(&mc);
  mc.embed_dim = E;
  mc.num_heads = H;
  mc.bias = 0;
  mc.batch_first = 1;
  mc.dtype = ATTN_DTYPE_F64;
  attn_mha_weights mw;
  attn_mha_weights_init(&mw);
  mw.in_proj_weight = tw.get();
  mw.out_proj_weight = two.get();
  attn::mha layer(ctx, mc, mw);
  // x [B, S, E] = the heads of q side by side
  std::vector<double> x(static_cast<std::size_t>(B * S * E)), y(x.size());
  for (std::int64_t s = 0; s < S; s++)
    for (std::int64_t h = 0; h < H; h++)
      for (std::int64_t dd = 0; dd < D; dd++)
        x[static_cast<std::size_t>(s * E + h * D + dd)] =
            q[static_cast<std::size_t>((h * S + s) * D + dd)];
  auto tx = attn::tensor::wrap(ctx, attn::span<double>(x), {B, S, E});
  auto ty = attn::tensor::wrap(ctx, attn::span<double>(y), {B, S, E});
  attn::mha_plan mp = layer.plan(nullptr, tx, tx, tx, nullptr, ty);
  mp.execute(tx, tx, tx, nullptr, ty);
  std::vector<double> want = naive(q, q, q, S, S, -1), got(want.size());
  for (std::int64_t s = 0; s < S; s++)
    for (std::int64_t h = 0; h < H; h++)
      for (std::int64_t dd = 0; dd < D; dd++)
        got[static_cast<std::size_t>((h * S + s) * D + dd)] =
            y[static_cast<std::size_t>(s * E + h * D + dd)];
  expect(max_err(got, want) < 1e-12, "mha (identity projections) == naive");

  if (failures) return 1;
  std::printf("consumer_cpp: OK (libattn %s)\n", attn::version().c_str());
  return 0;
}
