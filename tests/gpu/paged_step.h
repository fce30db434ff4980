// Paged-KV steps for the conformance suites: built the way the runtime builds them, pages shuffled, unused
// slots NaN; the CUDA ops and their CPU twins run over the same step.
#pragma once

#include "conformance.h"

namespace tandem {
// ---------------------------------------------------------------------------------------------------- paged KV

// A step over several sequences sharing one paged pool, built the way the runtime builds it. Each sequence has
// `history` positions already in the cache and `fresh` new tokens in this step (fresh > 1: prefill or chunked
// prefill; history > 0 and fresh == 1: decode). Pages come from a PageTable whose free list was first shuffled
// (decoy sequences take every page and are released in random order), and the sequences then grow a page at a
// time in random turns: each sequence's pages are non-contiguous and out of order. The step's tokens of different
// sequences are interleaved at random (each sequence's own tokens in order), and the tables come from
// build_kv_tables, so batch indices differ from sequence ids. Every pool slot that holds no history is NaN:
// reading one by mistake poisons the output; the spare pages are never handed to any sequence.
struct SeqSpec {
  int64_t history, fresh;
};

struct AttnCase {
  DType dtype;
  int n_heads, n_kv_heads, head_dim, window;
  int64_t page_size;
  KvLayout layout;
};

inline std::string describe_case(const AttnCase& c) {
  return fmt::format("dtype={} heads={}/{} (group {}) head_dim={} window={} page_size={} layout={}",
                     dtype_name(c.dtype), c.n_heads, c.n_kv_heads, c.n_heads / c.n_kv_heads, c.head_dim, c.window,
                     c.page_size, kv_layout_name(c.layout));
}

inline AttentionShape shape_of(const AttnCase& c) { return {c.n_heads, c.n_kv_heads, c.head_dim, c.window}; }

struct PagedStep {
  AttnCase c;
  KvGeometry geom;
  int64_t num_pages = 0;
  PageTable pages;
  std::vector<int32_t> seq_of, pos;  // [T]: sequence id (-1: none, an appended invalid token) and position
  std::vector<bool> valid;           // [T]: the token names a slot (what kv_write writes, attention reads from)
  KvStepTables tables;               // what the ops get (tests may corrupt it after make_step)
  std::vector<float> k_pool, v_pool;  // [num_pages * page_elems], values representable in c.dtype
  std::vector<float> qkv;             // [T, qkv_dim]

  int64_t T() const { return int64_t(pos.size()); }
  int64_t kv_dim() const { return int64_t(c.n_kv_heads) * c.head_dim; }
  int64_t q_dim() const { return int64_t(c.n_heads) * c.head_dim; }
  int64_t qkv_dim() const { return q_dim() + 2 * kv_dim(); }
  int64_t pool_elems() const { return num_pages * geom.page_elems(); }
  // Element offset of (sequence, position, kv head) in a pool, from the layout's definition (not kv_strides).
  int64_t offset(int32_t seq, int64_t p, int64_t h) const {
    const int64_t page = pages.pages(seq)[size_t(p / c.page_size)], slot = p % c.page_size;
    const int64_t base = page * geom.page_elems();
    if (c.layout == KvLayout::NHD) return base + (slot * c.n_kv_heads + h) * c.head_dim;
    return base + (h * c.page_size + slot) * c.head_dim;
  }
};

inline PagedStep make_step(const AttnCase& c, const std::vector<SeqSpec>& seqs, uint32_t seed, int64_t spare_pages = 5) {
  PagedStep st;
  st.c = c;
  st.geom = KvGeometry{1, c.n_kv_heads, c.head_dim, c.page_size, c.layout};
  std::mt19937 rng(seed);
  const int64_t ps = c.page_size;
  int64_t needed = 0;
  for (const SeqSpec& s : seqs) needed += (s.history + s.fresh + ps - 1) / ps;
  st.num_pages = needed + spare_pages;
  st.pages = PageTable(ps, st.num_pages);
  // Shuffle the free list: one decoy sequence per page, released in random order (release and reuse).
  std::vector<int32_t> decoys;
  for (int64_t i = 0; i < st.num_pages; ++i) {
    const int32_t id = int32_t(1'000'000 + i);
    st.pages.add_sequence(id);
    st.pages.reserve(id, ps);
    decoys.push_back(id);
  }
  std::shuffle(decoys.begin(), decoys.end(), rng);
  for (int32_t id : decoys) st.pages.release(id);
  // The sequences grow one page at a time, in random turns.
  std::vector<int64_t> have(seqs.size(), 0);
  std::vector<size_t> growing;
  for (size_t s = 0; s < seqs.size(); ++s) {
    st.pages.add_sequence(int32_t(s));
    if (seqs[s].history + seqs[s].fresh > 0) growing.push_back(s);
  }
  while (!growing.empty()) {
    const size_t i = rng() % growing.size(), s = growing[i];
    have[s] = std::min(have[s] + ps, seqs[s].history + seqs[s].fresh);
    st.pages.reserve(int32_t(s), have[s]);
    if (have[s] == seqs[s].history + seqs[s].fresh) {
      growing[i] = growing.back();
      growing.pop_back();
    }
  }

  // History in the pools, NaN everywhere else.
  st.k_pool.assign(size_t(st.pool_elems()), kQuietNaN);
  st.v_pool = st.k_pool;
  const int64_t hd = c.head_dim;
  for (size_t s = 0; s < seqs.size(); ++s) {
    const int64_t n = seqs[s].history * st.kv_dim();
    if (n == 0) continue;
    const std::vector<float> k = randn(n, c.dtype, seed + 7 + 2 * uint32_t(s)), v = randn(n, c.dtype, seed + 8 + 2 * uint32_t(s));
    for (int64_t p = 0; p < seqs[s].history; ++p)
      for (int64_t h = 0; h < c.n_kv_heads; ++h) {
        const int64_t off = st.offset(int32_t(s), p, h), src = (p * c.n_kv_heads + h) * hd;
        std::copy_n(k.begin() + src, hd, st.k_pool.begin() + off);
        std::copy_n(v.begin() + src, hd, st.v_pool.begin() + off);
      }
  }

  // The step's tokens, interleaved across sequences.
  for (size_t s = 0; s < seqs.size(); ++s) st.seq_of.insert(st.seq_of.end(), size_t(seqs[s].fresh), int32_t(s));
  std::shuffle(st.seq_of.begin(), st.seq_of.end(), rng);
  std::vector<int64_t> next(seqs.size());
  for (size_t s = 0; s < seqs.size(); ++s) next[s] = seqs[s].history;
  for (int32_t s : st.seq_of) st.pos.push_back(int32_t(next[size_t(s)]++));
  st.valid.assign(st.seq_of.size(), true);
  std::map<int32_t, int64_t> kv_len;
  for (size_t s = 0; s < seqs.size(); ++s) kv_len[int32_t(s)] = seqs[s].history + seqs[s].fresh;
  st.tables = build_kv_tables(st.seq_of, st.pages, kv_len);
  EXPECT_EQ(int64_t(st.tables.token_batch.size()), st.T());
  st.qkv = randn(st.T() * st.qkv_dim(), c.dtype, seed + 3);
  return st;
}

// Adds a token that names no slot: seq_of -1, the given batch index and position, random qkv.
inline void append_invalid_token(PagedStep& st, int32_t batch, int32_t pos, uint32_t seed) {
  st.seq_of.push_back(-1);
  st.pos.push_back(pos);
  st.valid.push_back(false);
  st.tables.token_batch.push_back(batch);
  const std::vector<float> row = randn(st.qkv_dim(), st.c.dtype, seed);
  st.qkv.insert(st.qkv.end(), row.begin(), row.end());
}

// The pools after kv_write of the step's valid tokens, and what kv_gather of the step then returns (NaN rows for
// invalid tokens), from the layout's definition.
struct PagedWant {
  std::vector<float> k_pool, v_pool, gathered;
};

inline PagedWant expected_writes(const PagedStep& st) {
  PagedWant w{st.k_pool, st.v_pool, std::vector<float>(size_t(st.T() * 2 * st.kv_dim()), kQuietNaN)};
  const int64_t hd = st.c.head_dim, kv_dim = st.kv_dim();
  for (int64_t t = 0; t < st.T(); ++t) {
    if (!st.valid[size_t(t)]) continue;
    const float* k = st.qkv.data() + t * st.qkv_dim() + st.q_dim();
    for (int64_t h = 0; h < st.c.n_kv_heads; ++h) {
      const int64_t off = st.offset(st.seq_of[size_t(t)], st.pos[size_t(t)], h);
      std::copy_n(k + h * hd, hd, w.k_pool.begin() + off);
      std::copy_n(k + kv_dim + h * hd, hd, w.v_pool.begin() + off);
    }
    std::copy_n(k, 2 * kv_dim, w.gathered.begin() + t * 2 * kv_dim);
  }
  return w;
}

enum PagedOps : unsigned { kWrite = 1, kAttend = 2, kGather = 4, kAllOps = 7 };

// What the ops produced: the attention output, the pools after them, the kv_gather output (empty if not run).
struct PagedResult {
  std::vector<float> out, k_pool, v_pool, gathered;
};

inline PagedKv paged_kv(const PagedStep& st, Device dev, DType dt, void* k, void* v, const Tensor& indptr,
                 const Tensor& indices, const Tensor& last, const Tensor& token_batch) {
  PagedKv kv;
  kv.k = kv_pool_view(k, dt, dev, st.geom, st.num_pages);
  kv.v = kv_pool_view(v, dt, dev, st.geom, st.num_pages);
  kv.layout = st.c.layout;
  kv.page_size = st.c.page_size;
  kv.page_indptr = indptr;
  kv.page_indices = indices;
  kv.last_page_len = last;
  kv.token_batch = token_batch;
  return kv;
}

// Which CUDA attention kernel run_cuda calls: attention() or the split-KV attention_decode().
enum class AttnKernel { standard, decode };

// The CUDA launchers on the step, every device buffer guarded; the guards are checked here. For
// AttnKernel::decode also that the workspace's counters are left zero.
inline PagedResult run_cuda(cudaStream_t stream, const PagedStep& st, unsigned ops,
                            AttnKernel kernel = AttnKernel::standard) {
  const DType dt = st.c.dtype;
  const int64_t T = st.T(), B = int64_t(st.tables.last_page_len.size());
  Guarded d_qkv(dt, {T, st.qkv_dim()}), d_pos(DType::I32, {T}), d_out(dt, {T, st.q_dim()});
  Guarded d_gathered(dt, {T, 2 * st.kv_dim()});
  Guarded d_indptr(DType::I32, {B + 1}), d_indices(DType::I32, {int64_t(st.tables.page_indices.size())});
  Guarded d_last(DType::I32, {B}), d_batch(DType::I32, {T});
  Guarded d_k(dt, {st.pool_elems()}), d_v(dt, {st.pool_elems()});
  d_qkv.upload(st.qkv);
  d_pos.upload_ints(st.pos);
  d_indptr.upload_ints(st.tables.page_indptr);
  d_indices.upload_ints(st.tables.page_indices);
  d_last.upload_ints(st.tables.last_page_len);
  d_batch.upload_ints(st.tables.token_batch);
  d_k.upload(st.k_pool);
  d_v.upload(st.v_pool);
  const PagedKv kv = paged_kv(st, Device::CUDA, dt, d_k.view().data, d_v.view().data, d_indptr, d_indices, d_last,
                              d_batch);
  const AttentionShape shape = shape_of(st.c);
  if (ops & kWrite) cuda::kv_write(d_qkv, d_pos, kv, shape, stream);
  const int64_t ws_floats = std::max<int64_t>(1, cuda::attention_decode_workspace(T, shape));
  const int64_t n_counters = std::min(ws_floats, T * shape.n_kv_heads);
  Guarded d_ws(DType::F32, {ws_floats});
  std::vector<float> ws(size_t(ws_floats), std::numeric_limits<float>::quiet_NaN());  // stale partial states
  std::fill_n(ws.begin(), n_counters, 0.0f);  // counters (int32 0 = f32 +0)
  d_ws.upload(ws);
  if (ops & kAttend) {
    if (kernel == AttnKernel::decode) cuda::attention_decode(d_qkv, d_pos, kv, shape, d_out, d_ws, stream);
    else cuda::attention(d_qkv, d_pos, kv, shape, d_out, stream);
  }
  if (ops & kGather) cuda::kv_gather(d_pos, kv, shape, d_gathered, stream);
  TD_CUDA_CHECK(cudaStreamSynchronize(stream));
  PagedResult r;
  if (ops & kAttend) r.out = d_out.download();
  if (ops & kGather) r.gathered = d_gathered.download();
  r.k_pool = d_k.download();
  r.v_pool = d_v.download();
  EXPECT_EQ(d_qkv.download(), st.qkv) << "qkv changed";  // (no NaN in qkv: plain equality)
  expect_guards_intact({&d_qkv, &d_pos, &d_out, &d_gathered, &d_indptr, &d_indices, &d_last, &d_batch, &d_k, &d_v,
                        &d_ws});
  if (kernel == AttnKernel::decode && cuda::attention_decode_workspace(T, shape) > 0) {
    const std::vector<float> after = d_ws.download();
    EXPECT_TRUE(std::all_of(after.begin(), after.begin() + n_counters, [](float c) { return c == 0.0f; }))
        << "attention_decode left a split counter non-zero";
  }
  return r;
}

// The CPU twins on the same inputs.
inline PagedResult run_cpu(const PagedStep& st, unsigned ops) {
  const int64_t T = st.T();
  HostTensor qkv = host_f32(st.qkv, {T, st.qkv_dim()}), pos = host_i32(st.pos);
  HostTensor k = host_f32(st.k_pool, {st.pool_elems()}), v = host_f32(st.v_pool, {st.pool_elems()});
  HostTensor indptr = host_i32(st.tables.page_indptr), indices = host_i32(st.tables.page_indices);
  HostTensor last = host_i32(st.tables.last_page_len), batch = host_i32(st.tables.token_batch);
  HostTensor out = HostTensor::empty(DType::F32, {T, st.q_dim()});
  HostTensor gathered = HostTensor::empty(DType::F32, {T, 2 * st.kv_dim()});
  const PagedKv kv = paged_kv(st, Device::CPU, DType::F32, k.f32(), v.f32(), indptr, indices, last, batch);
  const AttentionShape shape = shape_of(st.c);
  if (ops & kWrite) cpu::kv_write(qkv, pos, kv, shape);
  if (ops & kAttend) cpu::attention(qkv, pos, kv, shape, out);
  if (ops & kGather) cpu::kv_gather(pos, kv, shape, gathered);
  PagedResult r;
  if (ops & kAttend) r.out = to_vector(out);
  if (ops & kGather) r.gathered = to_vector(gathered);
  r.k_pool = to_vector(k);
  r.v_pool = to_vector(v);
  return r;
}

// Runs kv_write, attention and kv_gather on the GPU and on the CPU and compares everything: the attention output
// within the dtype's NMSE bound, the pools and kv_gather bit for bit (with each other and with the layout's
// definition). Every token of the step must be valid.
inline void check_paged_step(cudaStream_t stream, const PagedStep& st, AttnKernel kernel = AttnKernel::standard) {
  const PagedResult got = run_cuda(stream, st, kAllOps, kernel), ref = run_cpu(st, kAllOps);
  const PagedWant want = expected_writes(st);
  EXPECT_TRUE(close(got.out, ref.out, nmse_bound(st.c.dtype))) << "attention output";
  EXPECT_TRUE(exact(ref.k_pool, want.k_pool)) << "CPU k pool";
  EXPECT_TRUE(exact(got.k_pool, want.k_pool)) << "k pool";
  EXPECT_TRUE(exact(got.v_pool, want.v_pool)) << "v pool";
  EXPECT_TRUE(exact(got.gathered, ref.gathered)) << "kv_gather vs CPU";
  EXPECT_TRUE(exact(got.gathered, want.gathered)) << "kv_gather vs the step's k | v";
}

// A mixed step for a page size: sequences ending exactly on, one before and one after a page boundary, prefills
// (fresh, chunked, crossing a page and the 64-key chunk), decodes (short, across 3 chunks), a single fresh token.
inline std::vector<SeqSpec> mixed_step(int64_t ps) {
  return {{0, 17},          // fresh prefill
          {2 * ps - 1, 1},  // decode ending exactly on a page boundary
          {2 * ps - 2, 1},  // ... one before
          {2 * ps, 1},      // ... one after: the token opens a page
          {0, ps},          // prefill ending on a boundary
          {5, ps + 1},      // prefill crossing a boundary, ending one after
          {ps, 70},         // chunked prefill from a page boundary, longer than a chunk
          {63, 3},          // crosses the 64-key chunk boundary
          {150, 1},         // long decode: 3 chunks
          {0, 1}};          // a single fresh token
}

inline const int64_t kPageSizes[] = {1, 16, 64};
inline const KvLayout kLayouts[] = {KvLayout::NHD, KvLayout::HND};


}  // namespace tandem
