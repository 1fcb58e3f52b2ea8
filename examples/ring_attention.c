/* Ring attention over MPI: causal self-attention on a sequence sharded over
 * the ranks (zig-zag layout, so every rank does the same work), checked on
 * every rank against libattn's single-process result for the whole
 * sequence. Each rank builds the same global input (here: from a formula),
 * keeps its rows, and gets the attention of its rows over all keys.
 *
 *   mpirun -np 4 ./build/examples/ring_attention
 *
 * Prints the mode, the ring steps and the max error on rank 0; exits 1 on
 * any rank whose error is out of tolerance. Link with
 * `pkg-config --cflags --libs attn-mpi` or CMake's attn::mpi. */
#include <attn/mpi.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { B = 1, H = 8, S = 1000, D = 64 };

static float input(int which, size_t i) { /* deterministic, in [-1, 1) */
  uint32_t x = (uint32_t)(i * 2654435761u) ^ (uint32_t)(which * 0x9E3779B9u);
  x ^= x >> 15;
  x *= 0x2C1B3C6Du;
  x ^= x >> 12;
  return (float)(x & 0xFFFF) / 32768.0f - 1.0f;
}

#define CHECK(call)                                                                   \
  do {                                                                                \
    attn_status st_ = (call);                                                         \
    if (st_ != ATTN_OK) {                                                             \
      fprintf(stderr, "rank %d: %s: %s (%s)\n", rank, #call, attn_status_string(st_), \
              attn_context_last_error(ctx));                                          \
      MPI_Abort(MPI_COMM_WORLD, 1);                                                   \
    }                                                                                 \
  } while (0)

int main(int argc, char **argv) {
  int provided, rank, nranks;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &nranks);
  attn_context *ctx = NULL;
  if (attn_context_create(NULL, &ctx) != ATTN_OK) MPI_Abort(MPI_COMM_WORLD, 1);

  /* The whole sequence (every rank can make it: it is a formula). */
  const int64_t full[4] = {B, H, S, D};
  attn_tensor *q, *k, *v, *ref;
  CHECK(attn_tensor_create(ctx, ATTN_DTYPE_F32, 4, full, &q));
  CHECK(attn_tensor_create(ctx, ATTN_DTYPE_F32, 4, full, &k));
  CHECK(attn_tensor_create(ctx, ATTN_DTYPE_F32, 4, full, &v));
  CHECK(attn_tensor_create(ctx, ATTN_DTYPE_F32, 4, full, &ref));
  float *qp = attn_tensor_data(q), *kp = attn_tensor_data(k), *vp = attn_tensor_data(v);
  for (size_t i = 0; i < (size_t)B * H * S * D; i++)
    qp[i] = input(0, i), kp[i] = input(1, i), vp[i] = input(2, i);

  /* My rows under the zig-zag layout: two runs of the sequence. */
  int64_t start[2], len[2];
  CHECK(attn_mpi_shard(ATTN_MPI_LAYOUT_ZIGZAG, S, nranks, rank, start, len));
  const int64_t n = len[0] + len[1], mine[4] = {B, H, n, D};
  attn_tensor *mq, *mk, *mv, *mo;
  CHECK(attn_tensor_create(ctx, ATTN_DTYPE_F32, 4, mine, &mq));
  CHECK(attn_tensor_create(ctx, ATTN_DTYPE_F32, 4, mine, &mk));
  CHECK(attn_tensor_create(ctx, ATTN_DTYPE_F32, 4, mine, &mv));
  CHECK(attn_tensor_create(ctx, ATTN_DTYPE_F32, 4, mine, &mo));
  for (int64_t h = 0; h < B * H; h++)
    for (int64_t i = 0; i < n; i++) {
      const int64_t g = i < len[0] ? start[0] + i : start[1] + (i - len[0]);
      const size_t from = (size_t)((h * S + g) * D), to = (size_t)((h * n + i) * D);
      memcpy((float *)attn_tensor_data(mq) + to, qp + from, D * sizeof(float));
      memcpy((float *)attn_tensor_data(mk) + to, kp + from, D * sizeof(float));
      memcpy((float *)attn_tensor_data(mv) + to, vp + from, D * sizeof(float));
    }

  attn_desc *desc;
  CHECK(attn_desc_create(ctx, &desc));
  CHECK(attn_desc_set_causal(desc, ATTN_CAUSAL_TOP_LEFT));

  /* The ring, collectively over MPI_COMM_WORLD. */
  attn_mpi_config cfg;
  attn_mpi_config_init(&cfg);
  cfg.mode = ATTN_MPI_MODE_RING;
  cfg.layout = ATTN_MPI_LAYOUT_ZIGZAG;
  attn_mpi_plan *plan;
  CHECK(attn_mpi_plan_create(ctx, MPI_COMM_WORLD, desc, &cfg, mq, mk, mv, mo, NULL, &plan));
  CHECK(attn_mpi_plan_execute(plan, mq, mk, mv, mo, NULL));
  attn_mpi_stats stats;
  stats.struct_size = sizeof stats;
  CHECK(attn_mpi_plan_stats(plan, &stats));

  /* The same attention in one process, for the check. */
  CHECK(attn_forward(ctx, desc, q, k, v, ref, NULL, NULL));
  const float *rp = attn_tensor_data(ref), *op = attn_tensor_data(mo);
  double err = 0;
  for (int64_t h = 0; h < B * H; h++)
    for (int64_t i = 0; i < n; i++) {
      const int64_t g = i < len[0] ? start[0] + i : start[1] + (i - len[0]);
      for (int64_t d = 0; d < D; d++)
        err = fmax(err, fabs((double)op[(h * n + i) * D + d] - rp[(h * S + g) * D + d]));
    }
  double worst = 0;
  MPI_Reduce(&err, &worst, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
  if (rank == 0)
    printf("ring attention: %d ranks, S=%d (zig-zag), %lld ring steps, %.3f ms, "
           "max |ring - single process| = %.2e\n",
           nranks, S, (long long)stats.steps, stats.seconds * 1e3, worst);

  attn_mpi_plan_destroy(plan);
  attn_desc_destroy(desc);
  attn_tensor *ts[8] = {q, k, v, ref, mq, mk, mv, mo};
  for (int i = 0; i < 8; i++) attn_tensor_destroy(ts[i]);
  attn_context_destroy(ctx);
  MPI_Finalize();
  return err <= 1e-5 ? 0 : 1;
}
