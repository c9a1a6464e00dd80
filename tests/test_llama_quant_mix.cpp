// llama.cpp's quantization mixes (common/llama_quant_mix.hpp) against tables
// worked out by hand from src/llama-quant.cpp for small llama configurations.
// For 8 layers use_more_bits(i, 8) holds for i < 1, i >= 7 and (i - 1) % 3 == 2:
// layers 0, 3, 6, 7; for 16 layers (i < 2, i >= 14, (i - 2) % 3 == 2):
// 0, 1, 4, 7, 10, 13, 14, 15.
#include "common/llama_quant_mix.hpp"

#include <doctest/doctest.h>

#include <string>

namespace {

using loftq::io::GgmlType;
using loftq_common::llama_mix_type;
using loftq_common::LlamaMix;
using loftq_common::LlamaMixModel;

// The type's name ("Q4_K"), "-" for a tensor llama.cpp leaves as it is.
std::string type_of(const std::string& name, std::vector<std::uint64_t> ne, const LlamaMixModel& m, LlamaMix mix) {
  const auto t = llama_mix_type(name, ne, m, mix);
  return t ? loftq::io::GgufFile::type_name(static_cast<std::uint32_t>(*t)) : "-";
}

std::string blk(int i, const char* module) { return "blk." + std::to_string(i) + "." + module + ".weight"; }

// One letter per layer of a module: 2..6 for Q2_K..Q6_K.
std::string per_layer(const char* module, int n_layer, std::uint64_t ne0, const LlamaMixModel& m, LlamaMix mix) {
  std::string s;
  for (int i = 0; i < n_layer; ++i) {
    const std::string t = type_of(blk(i, module), {ne0, 256}, m, mix);
    s += t.size() == 4 && t[0] == 'Q' && t[2] == '_' && t[3] == 'K' ? t[1] : '?';
  }
  return s;
}

const LlamaMixModel kDense8{8, 4, 4, true};
const LlamaMixModel kGqa8{8, 8, 2, true};  // n_gqa = 4

}  // namespace

TEST_CASE("per-layer types of an 8-layer dense llama, every mix") {
  struct Row {
    LlamaMix mix;
    const char *attn_v, *ffn_down, *attn_output, *other, *embd;
  };
  // attn_v / ffn_down per layer, then attn_output, attn_q/attn_k/ffn_gate/ffn_up, token_embd (output: Q6_K).
  const Row rows[] = {
      {LlamaMix::q2_k, "33333333", "33333333", "Q3_K", "Q2_K", "Q2_K"},
      {LlamaMix::q3_k_m, "55444444", "44444444", "Q4_K", "Q3_K", "Q3_K"},
      {LlamaMix::q4_k_s, "55554444", "54444444", "Q4_K", "Q4_K", "Q4_K"},
      {LlamaMix::q4_k_m, "64464466", "64464466", "Q4_K", "Q4_K", "Q4_K"},
      {LlamaMix::q5_k_m, "65565566", "65565566", "Q5_K", "Q5_K", "Q5_K"},
  };
  for (const Row& r : rows) {
    CAPTURE(static_cast<int>(r.mix));
    CHECK(per_layer("attn_v", 8, 256, kDense8, r.mix) == r.attn_v);
    CHECK(per_layer("ffn_down", 8, 768, kDense8, r.mix) == r.ffn_down);
    for (int i = 0; i < 8; ++i) {
      CHECK(type_of(blk(i, "attn_output"), {256, 256}, kDense8, r.mix) == r.attn_output);
      for (const char* mod : {"attn_q", "attn_k", "ffn_gate", "ffn_up"})
        CHECK(type_of(blk(i, mod), {256, 768}, kDense8, r.mix) == r.other);
      CHECK(type_of(blk(i, "attn_norm"), {256}, kDense8, r.mix) == "-");
      CHECK(type_of(blk(i, "ffn_norm"), {256}, kDense8, r.mix) == "-");
    }
    CHECK(type_of("output.weight", {256, 512}, kDense8, r.mix) == "Q6_K");
    CHECK(type_of("token_embd.weight", {256, 512}, kDense8, r.mix) == r.embd);
    CHECK(type_of("output_norm.weight", {256}, kDense8, r.mix) == "-");
    // Tied embeddings: token_embd is the output.
    CHECK(type_of("token_embd.weight", {256, 512}, {8, 4, 4, false}, r.mix) == "Q6_K");
  }
}

TEST_CASE("grouped-query attention: Q2_K's attn_v at Q4_K from n_head / n_head_kv = 4") {
  CHECK(per_layer("attn_v", 8, 256, kGqa8, LlamaMix::q2_k) == "44444444");
  CHECK(per_layer("attn_v", 8, 256, {8, 6, 2, true}, LlamaMix::q2_k) == "33333333");  // n_gqa 3
  // The other mixes do not look at n_gqa.
  CHECK(per_layer("attn_v", 8, 256, kGqa8, LlamaMix::q4_k_m) == "64464466");
  CHECK(per_layer("attn_v", 8, 256, kGqa8, LlamaMix::q3_k_m) == "55444444");
}

TEST_CASE("16 layers: the n/16 and n/8 thresholds") {
  const LlamaMixModel m{16, 4, 4, true};
  CHECK(per_layer("attn_v", 16, 256, m, LlamaMix::q4_k_m) == "6644644644644666");
  CHECK(per_layer("ffn_down", 16, 256, m, LlamaMix::q4_k_m) == "6644644644644666");
  CHECK(per_layer("ffn_down", 16, 256, m, LlamaMix::q3_k_m) == "5444444444444444");
  CHECK(per_layer("ffn_down", 16, 256, m, LlamaMix::q4_k_s) == "5544444444444444");
  CHECK(per_layer("attn_v", 16, 256, m, LlamaMix::q4_k_s) == "5555444444444444");
}

TEST_CASE("LLM_TYPE_70B: 80 layers with GQA lift Q3_K and Q4_K attn_v to Q5_K") {
  const LlamaMixModel m70{80, 64, 8, true}, m65{80, 64, 64, true};
  // Layer 1 is in the first eighth (Q6_K either way); layer 11: 11 >= 10, 11 < 70, (11 - 10) % 3 = 1.
  CHECK(type_of(blk(1, "attn_v"), {8192, 1024}, m70, LlamaMix::q4_k_m) == "Q6_K");
  CHECK(type_of(blk(11, "attn_v"), {8192, 1024}, m70, LlamaMix::q4_k_m) == "Q5_K");
  CHECK(type_of(blk(11, "attn_v"), {8192, 8192}, m65, LlamaMix::q4_k_m) == "Q4_K");
  CHECK(type_of(blk(11, "attn_v"), {8192, 1024}, m70, LlamaMix::q2_k) == "Q5_K");  // Q4_K from n_gqa 8, then Q5_K
  CHECK(type_of(blk(11, "ffn_down"), {28672, 8192}, m70, LlamaMix::q4_k_m) == "Q4_K");
}

TEST_CASE("rows that are not whole super-blocks fall back as tensor_type_fallback does") {
  // 288 = 9 * 32: a 32-element type fits.
  CHECK(type_of(blk(1, "attn_q"), {288, 288}, kDense8, LlamaMix::q2_k) == "Q4_0");
  CHECK(type_of(blk(1, "attn_q"), {288, 288}, kDense8, LlamaMix::q3_k_m) == "Q4_0");
  CHECK(type_of(blk(1, "attn_q"), {288, 288}, kDense8, LlamaMix::q4_k_m) == "Q5_0");
  CHECK(type_of(blk(1, "attn_q"), {288, 288}, kDense8, LlamaMix::q5_k_m) == "Q5_1");
  CHECK(type_of(blk(0, "attn_v"), {288, 288}, kDense8, LlamaMix::q4_k_m) == "Q8_0");  // Q6_K's fallback
  CHECK(type_of(blk(0, "attn_v"), {288, 288}, kDense8, LlamaMix::q3_k_m) == "Q5_1");  // Q5_K's
  // The output's own rule: Q8_0 when the base type's block does not divide the row.
  CHECK(type_of("output.weight", {288, 512}, kDense8, LlamaMix::q4_k_m) == "Q8_0");
  // Not even whole blocks of 32: F16.
  CHECK(type_of(blk(1, "ffn_down"), {172, 64}, kDense8, LlamaMix::q4_k_m) == "F16");
  CHECK(type_of("output.weight", {100, 512}, kDense8, LlamaMix::q2_k) == "F16");
}

TEST_CASE("what llama.cpp leaves as it is") {
  CHECK(type_of(blk(0, "attn_q"), {256, 1}, kDense8, LlamaMix::q4_k_m) == "-");  // one row: 1-D to ggml_n_dims
  CHECK(type_of("blk.0.attn_q.bias", {256, 256}, kDense8, LlamaMix::q4_k_m) == "-");
  CHECK(type_of("blk.0.ffn_gate_inp.weight", {256, 8}, kDense8, LlamaMix::q4_k_m) == "-");
  CHECK(type_of("rope_freqs.weight", {64}, kDense8, LlamaMix::q4_k_m) == "-");
  CHECK(type_of("position_embd.weight", {256, 256}, kDense8, LlamaMix::q4_k_m) == "-");
}
