// fill_uniform (benchmark weights) against its host twin, for every dtype; part of the op conformance suite.
#include <gtest/gtest.h>

#include <cmath>

#include "core/dtype.h"
#include "cuda/check.h"
#include "cuda/device_buffer.h"
#include "cuda/device_query.h"
#include "cuda/random_fill.cuh"

namespace tandem::cuda {
namespace {

TEST(OpConformance, fill_uniform_AllDtypesMatchHostTwin) {
  if (device_count() == 0) GTEST_SKIP() << "no CUDA device";
  for (DType dt : {DType::F32, DType::F16, DType::BF16}) {
    const int64_t n = 100003;  // odd: grid-stride tail
    DeviceTensor t = DeviceTensor::empty(dt, {n});
    fill_uniform(t, 42, 1.0f, 0.5f, nullptr);
    TD_CUDA_CHECK(cudaDeviceSynchronize());
    HostTensor h = download_f32(t, nullptr);
    double mean = 0;
    for (int64_t i = 0; i < n; ++i) {
      const float want = uniform_value(42, i, 1.0f, 0.5f);
      const float rounded = dt == DType::F32 ? want : dt == DType::F16 ? fp16_to_f32(f32_to_fp16(want))
                                                                        : bf16_to_f32(f32_to_bf16(want));
      ASSERT_EQ(h.f32()[i], rounded) << dtype_name(dt) << " index " << i;
      ASSERT_GE(want, 0.5f);
      ASSERT_LT(want, 1.5f);
      mean += want;
    }
    EXPECT_NEAR(mean / double(n), 1.0, 0.01);
  }
}

}  // namespace
}  // namespace tandem::cuda
