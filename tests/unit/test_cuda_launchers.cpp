// CUDA launcher argument validation, runnable without a GPU: every bad call must throw a tandem::Error that names
// the op and the offending tensor *before* any CUDA API call. The tensors here carry fake data pointers that are
// never dereferenced; a launcher that skipped validation would reach the CUDA runtime, whose errors read
// "CUDA error ...", which these tests reject.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <utility>

#include "core/error.h"
#include "core/tensor.h"
#include "cuda/attention.cuh"
#include "cuda/elementwise.cuh"
#include "cuda/embedding.cuh"
#include "cuda/flashinfer.cuh"
#include "cuda/gemm.cuh"
#include "cuda/norm.cuh"
#include "cuda/rope.cuh"
#include "cuda/sampling.cuh"
#include "exec/kv_cache.h"

namespace tandem {
namespace {
using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;

void* fake_ptr() { return reinterpret_cast<void*>(uintptr_t(0x10000)); }

Tensor dev(DType dt, std::initializer_list<int64_t> shape) {
  return Tensor::contiguous(fake_ptr(), dt, shape, Device::CUDA);
}
Tensor host(DType dt, std::initializer_list<int64_t> shape) {
  return Tensor::contiguous(fake_ptr(), dt, shape, Device::CPU);
}

template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "<no tandem::Error thrown>";
}

// The message names the op and the tensor, and does not come from the CUDA runtime.
auto names(const std::string& op, const Tensor& culprit) {
  return AllOf(HasSubstr(op), HasSubstr(culprit.describe()), Not(HasSubstr("CUDA error")),
               Not(HasSubstr("cuBLAS error")));
}

TEST(CudaLaunchers, EmbedRejectsBadArguments) {
  const Tensor table = dev(DType::BF16, {100, 64}), ids = dev(DType::I32, {3}), out = dev(DType::BF16, {3, 64});
  const Tensor cpu_table = host(DType::BF16, {100, 64});
  EXPECT_THAT(error_of([&] { cuda::embed(cpu_table, ids, out, nullptr); }), names("embed", cpu_table));
  const Tensor ids64 = dev(DType::I64, {3});
  EXPECT_THAT(error_of([&] { cuda::embed(table, ids64, out, nullptr); }), names("embed", ids64));
  const Tensor wide = dev(DType::BF16, {3, 65});
  EXPECT_THAT(error_of([&] { cuda::embed(table, ids, wide, nullptr); }), names("embed", wide));
  const Tensor f16_out = dev(DType::F16, {3, 64});
  EXPECT_THAT(error_of([&] { cuda::embed(table, ids, f16_out, nullptr); }), names("embed", f16_out));
  const Tensor q4 = dev(DType::Q4_0, {100, 64});
  EXPECT_THAT(error_of([&] { cuda::embed(q4, ids, out, nullptr); }), names("embed", q4));
}

TEST(CudaLaunchers, RmsnormRejectsBadArguments) {
  const Tensor x = dev(DType::F16, {4, 96}), w = dev(DType::F16, {96}), out = dev(DType::F16, {4, 96});
  const Tensor cpu_x = host(DType::F16, {4, 96});
  EXPECT_THAT(error_of([&] { cuda::rmsnorm(cpu_x, w, 1e-5f, out, nullptr); }), names("rmsnorm", cpu_x));
  const Tensor short_w = dev(DType::F16, {95});
  EXPECT_THAT(error_of([&] { cuda::rmsnorm(x, short_w, 1e-5f, out, nullptr); }), names("rmsnorm", short_w));
  const Tensor bf16_w = dev(DType::BF16, {96});
  EXPECT_THAT(error_of([&] { cuda::rmsnorm(x, bf16_w, 1e-5f, out, nullptr); }), names("rmsnorm", bf16_w));
  const Tensor cpu_out = host(DType::F16, {4, 96});
  EXPECT_THAT(error_of([&] { cuda::rmsnorm(x, w, 1e-5f, cpu_out, nullptr); }), names("rmsnorm", cpu_out));
  EXPECT_THAT(error_of([&] { cuda::rmsnorm(x, w, -1.0f, out, nullptr); }), HasSubstr("eps"));
}

TEST(CudaLaunchers, RopeRejectsBadArguments) {
  // 4 q heads + 2 x 2 kv heads of 64.
  const Tensor qkv = dev(DType::BF16, {3, 512}), pos = dev(DType::I32, {3}), freq = dev(DType::F32, {32});
  EXPECT_THAT(error_of([&] { cuda::rope(qkv, pos, freq, 4, 2, 63, nullptr); }), HasSubstr("head_dim"));
  const Tensor narrow = dev(DType::BF16, {3, 511});
  EXPECT_THAT(error_of([&] { cuda::rope(narrow, pos, freq, 4, 2, 64, nullptr); }), names("rope", narrow));
  const Tensor pos2 = dev(DType::I32, {2});
  EXPECT_THAT(error_of([&] { cuda::rope(qkv, pos2, freq, 4, 2, 64, nullptr); }), names("rope", pos2));
  const Tensor freq_bf16 = dev(DType::BF16, {32});
  EXPECT_THAT(error_of([&] { cuda::rope(qkv, pos, freq_bf16, 4, 2, 64, nullptr); }), names("rope", freq_bf16));
  const Tensor cpu_pos = host(DType::I32, {3});
  EXPECT_THAT(error_of([&] { cuda::rope(qkv, cpu_pos, freq, 4, 2, 64, nullptr); }), names("rope", cpu_pos));
}

TEST(CudaLaunchers, ElementwiseRejectsBadArguments) {
  const Tensor x = dev(DType::F32, {3, 10}), bias9 = dev(DType::F32, {9});
  EXPECT_THAT(error_of([&] { cuda::add_bias(x, bias9, nullptr); }), names("add_bias", bias9));
  const Tensor cpu_x = host(DType::F32, {3, 10});
  EXPECT_THAT(error_of([&] { cuda::add_bias(cpu_x, dev(DType::F32, {10}), nullptr); }), names("add_bias", cpu_x));

  const Tensor gate_up = dev(DType::BF16, {3, 20}), out_bad = dev(DType::BF16, {3, 11});
  EXPECT_THAT(error_of([&] { cuda::silu_mul(gate_up, out_bad, nullptr); }), names("silu_mul", out_bad));

  const Tensor a = dev(DType::F16, {3, 10}), b_bad = dev(DType::F16, {3, 11}), out = dev(DType::F16, {3, 10});
  EXPECT_THAT(error_of([&] { cuda::add(a, b_bad, out, nullptr); }), names("add", b_bad));
  const Tensor out_f32 = dev(DType::F32, {3, 10});
  EXPECT_THAT(error_of([&] { cuda::add(a, a, out_f32, nullptr); }), names("add", out_f32));

  const Tensor dst_bad = dev(DType::BF16, {31});
  EXPECT_THAT(error_of([&] { cuda::convert(a, dst_bad, nullptr); }), names("convert", dst_bad));
  const Tensor q8 = dev(DType::Q8_0, {1, 32});
  EXPECT_THAT(error_of([&] { cuda::convert(q8, dev(DType::F32, {1, 32}), nullptr); }), names("convert", q8));

  const Tensor src = dev(DType::F32, {5, 8}), rows64 = dev(DType::I64, {2});
  EXPECT_THAT(error_of([&] { cuda::gather_rows(src, rows64, dev(DType::F32, {2, 8}), nullptr); }),
              names("gather_rows", rows64));
  const Tensor rows = dev(DType::I32, {2}), out_rows = dev(DType::F32, {3, 8});
  EXPECT_THAT(error_of([&] { cuda::gather_rows(src, rows, out_rows, nullptr); }), names("gather_rows", out_rows));
}

// A valid paged step for the attention tests: 4 q heads, 2 kv heads of 64 (qkv_dim 512, kv_dim 128), 3 tokens of
// 2 sequences, NHD pools of 10 pages of 16 slots.
struct PagedArgs {
  AttentionShape shape{4, 2, 64, 0};
  Tensor qkv = dev(DType::BF16, {3, 512}), pos = dev(DType::I32, {3}), out = dev(DType::BF16, {3, 256});
  Tensor gathered = dev(DType::BF16, {3, 256});
  PagedKv kv;
  PagedArgs() {
    kv.k = dev(DType::BF16, {10, 16, 2, 64});
    kv.v = dev(DType::BF16, {10, 16, 2, 64});
    kv.layout = KvLayout::NHD;
    kv.page_size = 16;
    kv.page_indptr = dev(DType::I32, {3});
    kv.page_indices = dev(DType::I32, {5});
    kv.last_page_len = dev(DType::I32, {2});
    kv.token_batch = dev(DType::I32, {3});
  }
  std::string attention() const {
    return error_of([&] { cuda::attention(qkv, pos, kv, shape, out, nullptr); });
  }
  std::string kv_write() const {
    return error_of([&] { cuda::kv_write(qkv, pos, kv, shape, nullptr); });
  }
  std::string kv_gather() const {
    return error_of([&] { cuda::kv_gather(pos, kv, shape, gathered, nullptr); });
  }
};

TEST(CudaLaunchers, AttentionRejectsBadShapes) {
  PagedArgs a;
  a.shape.n_kv_heads = 3;
  EXPECT_THAT(a.attention(), AllOf(HasSubstr("attention"), HasSubstr("kv heads"), Not(HasSubstr("CUDA error"))));
  a = PagedArgs();
  a.shape.head_dim = 512;
  EXPECT_THAT(a.kv_write(), AllOf(HasSubstr("kv_write"), HasSubstr("head_dim"), Not(HasSubstr("CUDA error"))));
  a = PagedArgs();
  a.shape.sliding_window = -1;
  EXPECT_THAT(a.kv_gather(), AllOf(HasSubstr("kv_gather"), HasSubstr("sliding window")));
  a = PagedArgs();
  a.kv.page_size = 0;
  EXPECT_THAT(a.attention(), AllOf(HasSubstr("attention"), HasSubstr("page_size"), Not(HasSubstr("CUDA error"))));
}

TEST(CudaLaunchers, AttentionRejectsBadActivations) {
  PagedArgs a;
  a.qkv = host(DType::BF16, {3, 512});
  EXPECT_THAT(a.attention(), names("attention", a.qkv));
  EXPECT_THAT(a.kv_write(), names("kv_write", a.qkv));
  a = PagedArgs();
  a.qkv = dev(DType::BF16, {3, 511});
  EXPECT_THAT(a.kv_write(), names("kv_write", a.qkv));
  a = PagedArgs();
  a.pos = dev(DType::I64, {3});
  EXPECT_THAT(a.attention(), names("attention", a.pos));
  EXPECT_THAT(a.kv_gather(), names("kv_gather", a.pos));
  a = PagedArgs();
  a.pos = dev(DType::I32, {2});  // T = 3 rows of qkv
  EXPECT_THAT(a.kv_write(), names("kv_write", a.pos));
  a = PagedArgs();
  a.out = dev(DType::BF16, {3, 255});
  EXPECT_THAT(a.attention(), names("attention", a.out));
  a = PagedArgs();
  a.out = dev(DType::F32, {3, 256});
  EXPECT_THAT(a.attention(), names("attention", a.out));
  a = PagedArgs();
  a.out = Tensor::contiguous(a.qkv.data, DType::BF16, {3, 256}, Device::CUDA);  // aliases qkv
  EXPECT_THAT(a.attention(), AllOf(names("attention", a.out), HasSubstr("alias")));
  a = PagedArgs();
  a.gathered = dev(DType::BF16, {3, 128});  // k | v is 2 x kv_dim
  EXPECT_THAT(a.kv_gather(), names("kv_gather", a.gathered));
  a = PagedArgs();
  a.gathered = dev(DType::F16, {3, 256});
  EXPECT_THAT(a.kv_gather(), names("kv_gather", a.gathered));
  a = PagedArgs();
  a.qkv.data = nullptr;
  EXPECT_THAT(a.kv_write(), AllOf(names("kv_write", a.qkv), HasSubstr("null")));
}

TEST(CudaLaunchers, AttentionRejectsBadPools) {
  PagedArgs a;
  const Tensor k_f16 = dev(DType::F16, {10, 16, 2, 64});
  a.kv.k = a.kv.v = k_f16;  // the cache must hold qkv's dtype
  EXPECT_THAT(a.attention(), names("attention", k_f16));
  EXPECT_THAT(a.kv_write(), names("kv_write", k_f16));
  a = PagedArgs();
  a.kv.v = dev(DType::F16, {10, 16, 2, 64});
  EXPECT_THAT(a.kv_write(), names("kv_write", a.kv.v));
  EXPECT_THAT(a.kv_gather(), names("kv_gather", a.kv.v));
  a = PagedArgs();
  a.kv.k = dev(DType::BF16, {10, 16, 2, 32});  // head_dim 32, not 64
  EXPECT_THAT(a.attention(), names("attention", a.kv.k));
  a = PagedArgs();
  a.kv.k = a.kv.v = dev(DType::BF16, {10, 16, 4, 64});  // 4 kv heads, not 2
  EXPECT_THAT(a.kv_gather(), names("kv_gather", a.kv.k));
  a = PagedArgs();
  a.kv.k = dev(DType::BF16, {160, 128});  // a 2-D (contiguous) cache
  EXPECT_THAT(a.attention(), names("attention", a.kv.k));
  a = PagedArgs();
  a.kv.page_size = 8;  // the view has 16 slots a page
  EXPECT_THAT(a.kv_write(), names("kv_write", a.kv.k));
  a = PagedArgs();
  a.kv.layout = KvLayout::HND;  // the view is NHD: [10, 16, 2, 64] is not [*, 2, 16, 64]
  EXPECT_THAT(a.attention(), names("attention", a.kv.k));
  a = PagedArgs();
  a.kv.v = dev(DType::BF16, {9, 16, 2, 64});  // fewer pages than k
  EXPECT_THAT(a.attention(), names("attention", a.kv.v));
  a = PagedArgs();
  std::swap(a.kv.k.strides[1], a.kv.k.strides[2]);  // not contiguous
  EXPECT_THAT(a.kv_write(), names("kv_write", a.kv.k));
  a = PagedArgs();
  a.kv.k = host(DType::BF16, {10, 16, 2, 64});
  EXPECT_THAT(a.kv_gather(), names("kv_gather", a.kv.k));
  a = PagedArgs();
  a.kv.v.data = nullptr;
  EXPECT_THAT(a.attention(), AllOf(names("attention", a.kv.v), HasSubstr("null")));
}

TEST(CudaLaunchers, AttentionRejectsBadPageTables) {
  PagedArgs a;
  a.kv.page_indptr = dev(DType::I64, {3});
  EXPECT_THAT(a.attention(), names("attention", a.kv.page_indptr));
  a = PagedArgs();
  a.kv.page_indptr = dev(DType::I32, {0});  // B + 1 >= 1
  EXPECT_THAT(a.kv_write(), names("kv_write", a.kv.page_indptr));
  a = PagedArgs();
  a.kv.page_indices = host(DType::I32, {5});
  EXPECT_THAT(a.kv_gather(), names("kv_gather", a.kv.page_indices));
  a = PagedArgs();
  a.kv.page_indices = dev(DType::I32, {5, 1});
  EXPECT_THAT(a.attention(), names("attention", a.kv.page_indices));
  a = PagedArgs();
  a.kv.last_page_len = dev(DType::I32, {3});  // B = 2
  EXPECT_THAT(a.attention(), names("attention", a.kv.last_page_len));
  a = PagedArgs();
  a.kv.token_batch = dev(DType::I32, {4});  // T = 3
  EXPECT_THAT(a.kv_write(), names("kv_write", a.kv.token_batch));
  EXPECT_THAT(a.attention(), names("attention", a.kv.token_batch));
  EXPECT_THAT(a.kv_gather(), names("kv_gather", a.kv.token_batch));
  a = PagedArgs();
  a.kv.token_batch = dev(DType::I16, {3});
  EXPECT_THAT(a.kv_gather(), names("kv_gather", a.kv.token_batch));
  a = PagedArgs();
  a.kv.page_indices.data = nullptr;
  EXPECT_THAT(a.kv_write(), AllOf(names("kv_write", a.kv.page_indices), HasSubstr("null")));
}

TEST(CudaLaunchers, GemmRejectsBadArgumentsWithoutCreatingAHandle) {
  cuda::Gemm gemm;  // constructing touches no CUDA API (the handle is made on the first valid call)
  const Tensor x = dev(DType::BF16, {7, 96}), w = dev(DType::BF16, {64, 96}), out = dev(DType::BF16, {7, 64});
  const Tensor cpu_x = host(DType::BF16, {7, 96});
  EXPECT_THAT(error_of([&] { gemm.linear(cpu_x, w, out, nullptr); }), names("linear", cpu_x));
  const Tensor w_k = dev(DType::BF16, {64, 95});
  EXPECT_THAT(error_of([&] { gemm.linear(x, w_k, out, nullptr); }), names("linear", w_k));
  const Tensor out_f16 = dev(DType::F16, {7, 64});
  EXPECT_THAT(error_of([&] { gemm.linear(x, w, out_f16, nullptr); }), names("linear", out_f16));
  const Tensor x32 = dev(DType::F32, {7, 96}), w32 = dev(DType::F32, {64, 96});
  EXPECT_THAT(error_of([&] { gemm.linear(x32, w32, out, nullptr); }), names("linear", out));
  const Tensor out_n = dev(DType::BF16, {7, 63});
  EXPECT_THAT(error_of([&] { gemm.linear(x, w, out_n, nullptr); }), names("linear", out_n));
}

// Empty batches are valid and return before any CUDA call (so this runs without a GPU too).
TEST(CudaLaunchers, SampleRowsRejectsBadArguments) {
  const int64_t pb = int64_t(sizeof(cuda::SampleRowParams));
  const Tensor logits = dev(DType::F32, {3, 100}), params = dev(DType::U8, {3, pb}), ids = dev(DType::I32, {5}),
               out = dev(DType::I32, {3});
  const Tensor cpu_logits = host(DType::F32, {3, 100});
  EXPECT_THAT(error_of([&] { cuda::sample_rows(cpu_logits, params, ids, out, nullptr); }),
              names("sample_rows", cpu_logits));
  const Tensor bf16_logits = dev(DType::BF16, {3, 100});
  EXPECT_THAT(error_of([&] { cuda::sample_rows(bf16_logits, params, ids, out, nullptr); }),
              names("sample_rows", bf16_logits));
  const Tensor short_params = dev(DType::U8, {2, pb}), narrow_params = dev(DType::U8, {3, pb - 8});
  EXPECT_THAT(error_of([&] { cuda::sample_rows(logits, short_params, ids, out, nullptr); }),
              names("sample_rows", short_params));
  EXPECT_THAT(error_of([&] { cuda::sample_rows(logits, narrow_params, ids, out, nullptr); }),
              names("sample_rows", narrow_params));
  const Tensor ids64 = dev(DType::I64, {5});
  EXPECT_THAT(error_of([&] { cuda::sample_rows(logits, params, ids64, out, nullptr); }), names("sample_rows", ids64));
  const Tensor long_out = dev(DType::I32, {4});
  EXPECT_THAT(error_of([&] { cuda::sample_rows(logits, params, ids, long_out, nullptr); }),
              names("sample_rows", long_out));
  // Penalty ids are checked on the host, where they are packed.
  std::vector<int32_t> packed;
  const std::vector<int32_t> outside{3, 100};
  std::vector<RowSampling> rows(1);
  rows[0].penalized = outside;
  EXPECT_THAT(error_of([&] { cuda::pack_sample_rows(rows, 100, &packed); }),
              AllOf(HasSubstr("sample_rows"), HasSubstr("100"), HasSubstr("vocabulary")));
}

TEST(CudaLaunchers, EmptyBatchesAreNoOps) {
  const Tensor none = Tensor::contiguous(nullptr, DType::BF16, {0, 64}, Device::CUDA);
  const Tensor no_ids = Tensor::contiguous(nullptr, DType::I32, {0}, Device::CUDA);
  EXPECT_NO_THROW(cuda::embed(dev(DType::BF16, {10, 64}), no_ids, none, nullptr));
  EXPECT_NO_THROW(cuda::rmsnorm(none, dev(DType::BF16, {64}), 1e-6f, none, nullptr));
  EXPECT_NO_THROW(cuda::add(none, none, none, nullptr));
  // A step of no tokens over a valid cache (an empty batch: page_indptr = [0]).
  PagedKv kv;
  kv.k = dev(DType::BF16, {10, 2, 16, 64});
  kv.v = dev(DType::BF16, {10, 2, 16, 64});
  kv.layout = KvLayout::HND;
  kv.page_size = 16;
  kv.page_indptr = dev(DType::I32, {1});
  kv.page_indices = no_ids;
  kv.last_page_len = no_ids;
  kv.token_batch = no_ids;
  const Tensor no_qkv = Tensor::contiguous(nullptr, DType::BF16, {0, 512}, Device::CUDA);
  const Tensor no_out = Tensor::contiguous(nullptr, DType::BF16, {0, 256}, Device::CUDA);
  const AttentionShape shape{4, 2, 64, 0};
  EXPECT_NO_THROW(cuda::kv_write(no_qkv, no_ids, kv, shape, nullptr));
  EXPECT_NO_THROW(cuda::attention(no_qkv, no_ids, kv, shape, no_out, nullptr));
  EXPECT_NO_THROW(cuda::kv_gather(no_ids, kv, shape, no_out, nullptr));
  cuda::Gemm gemm;
  EXPECT_NO_THROW(gemm.linear(Tensor::contiguous(nullptr, DType::BF16, {0, 96}, Device::CUDA),
                              dev(DType::BF16, {64, 96}), Tensor::contiguous(nullptr, DType::BF16, {0, 64}, Device::CUDA),
                              nullptr));
}

// diff's report line for attention.flashinfer's state (no GPU needed).
TEST(FlashInferReport, DescribePlanNamesEveryField) {
  cuda::FlashInferPlanSummary p;
  p.batch = 3;
  p.tokens = 3;
  p.cta_tile_q = 16;
  p.padded_batch_size = 33;
  p.split_kv = true;
  p.cuda_graph = true;
  p.float_workspace_bytes = 1024;
  p.int_workspace_bytes = 256;
  EXPECT_EQ(cuda::describe_plan(p), "FlashInfer plan: batch 3, 3 tokens, CTA tile 16, padded batch 33, split-KV on "
                                    "(auto), CUDA-graph mode, workspaces 1024 B float + 256 B int");
  // The split-KV mode asked for (--split-kv) and the chunk the plan chose.
  p.kv_chunk_tokens = 48;
  EXPECT_NE(cuda::describe_plan(p).find(", split-KV on (auto, 48-token chunks), "), std::string::npos);
  p.split_mode = SplitKv::on;
  p.kv_chunk_tokens = 4;
  EXPECT_NE(cuda::describe_plan(p).find(", split-KV on (forced, 4-token chunks), "), std::string::npos);
  p.split_kv = false;
  p.kv_chunk_tokens = 16;
  EXPECT_NE(cuda::describe_plan(p).find(", split-KV off (forced, but no sequence spans two 16-token chunks), "),
            std::string::npos);
  p.split_mode = SplitKv::off;
  p.kv_chunk_tokens = 0;
  EXPECT_NE(cuda::describe_plan(p).find(", split-KV off (disabled), "), std::string::npos);
  EXPECT_EQ(split_kv_from_name("on"), SplitKv::on);
  EXPECT_EQ(split_kv_from_name("auto"), SplitKv::automatic);
  EXPECT_EQ(split_kv_from_name("off"), SplitKv::off);
  EXPECT_FALSE(split_kv_from_name("yes").has_value());
  EXPECT_EQ(split_kv_name(SplitKv::automatic), "auto");
}

}  // namespace
}  // namespace tandem
