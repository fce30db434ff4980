#include "runtime/sampler.h"

#include <algorithm>
#include <random>

#include "core/error.h"
#include "core/hash.h"

namespace tandem {
namespace {

uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t random_seed() {
  std::random_device rd;
  uint64_t hi = static_cast<uint64_t>(rd()) & 0xffffffffULL;
  uint64_t lo = static_cast<uint64_t>(rd()) & 0xffffffffULL;
  return (hi << 32) | lo;
}

}  // namespace

Sampler::Sampler(const SamplingParams& params) : params_(params) {
  params_.validate();
  seed_ = params_.seed ? *params_.seed : random_seed();
  uint64_t x = seed_;
  for (auto& s : state_) s = splitmix64(x);
}

double Sampler::advance(uint64_t (&state)[4]) {
  // xoshiro256** (Blackman & Vigna), top 53 bits -> [0, 1).
  const uint64_t result = rotl(state[1] * 5, 7) * 9;
  const uint64_t t = state[1] << 17;
  state[2] ^= state[0];
  state[3] ^= state[1];
  state[1] ^= state[2];
  state[0] ^= state[3];
  state[2] ^= t;
  state[3] = rotl(state[3], 45);
  return static_cast<double>(result >> 11) * 0x1.0p-53;
}

int32_t Sampler::sample(std::span<const float> logits, std::span<const int32_t> recent) {
  // One draw per sampled token, whatever survives the filters; none when the row cannot be sampled (it throws).
  const RowSampling draw = peek_draw(recent);
  const int32_t token = sample_row(logits, draw.penalized, params_, draw.u, &scratch_);
  accept_draw();
  return token;
}

RowSampling Sampler::peek_draw(std::span<const int32_t> recent) const {
  RowSampling r;
  r.params = params_;
  if (!params_.greedy()) {
    uint64_t copy[4];
    std::copy(std::begin(state_), std::end(state_), copy);
    r.u = advance(copy);
  }
  r.penalized = penalty_window(recent, params_);
  return r;
}

void Sampler::accept_draw() {
  if (!params_.greedy()) next_uniform();
}

}  // namespace tandem
