// loftq/io/peft.hpp: adapters written, read back and checked against what
// they must mean (PEFT's names and scaling).
#include <doctest/doctest.h>

#include <loftq/io/peft.hpp>
#include <loftq/loftq.hpp>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "io_support.hpp"

// Its own namespace: the test program compiles this file with others as one
// unit (tests/io/CMakeLists.txt).
namespace test_peft {

namespace io = loftq::io;
namespace fs = std::filesystem;
using io_test::error_code_of;
using io_test::loftq_result;
using io_test::random_matrix;
using io_test::scratch;

TEST_CASE("PEFT tensor names") {
  CHECK(io::lora_a_name("model.layers.0.self_attn.q_proj.weight") ==
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight");
  CHECK(io::lora_b_name("model.layers.0.mlp.down_proj.weight") ==
        "base_model.model.model.layers.0.mlp.down_proj.lora_B.weight");
  CHECK(io::lora_module_path("x.weight") == "x");
  for (const char* bad : {"q_proj.bias", ".weight", "weight", ""})
    CHECK(error_code_of([&] { (void)io::lora_a_name(bad); }) == loftq::Errc::invalid_argument);
}

TEST_CASE("adapter round trip: PEFT's (alpha / r) lora_B lora_A is A B^T") {
  const Eigen::Index r = 4;
  const double alpha = 16;
  const Eigen::MatrixXf Wq = random_matrix(48, 32, 1), Wo = random_matrix(32, 48, 2);
  const loftq::Result<float> rq = loftq_result(Wq, 4, r, false), ro = loftq_result(Wo, 2, r, false);
  const std::vector<io::LoraTarget> targets = {{"layers.0.attn.q_proj.weight", 48, 32},
                                               {"layers.0.attn.o_proj.weight", 32, 48}};
  const std::string path = scratch("adapter_model.safetensors");
  {
    io::AdapterWriter w(path, targets, r, {{"format", "pt"}});
    w.write("layers.0.attn.o_proj.weight", loftq::to_peft(ro, alpha));  // any order
    w.write("layers.0.attn.q_proj.weight", loftq::to_peft(rq, alpha));
    w.commit();
  }
  const io::SafetensorsFile f(path);
  CHECK(f.metadata().at("format") == "pt");
  // Exactly PEFT's names, float32, lora_A r x in and lora_B out x r.
  REQUIRE(f.tensors().size() == 4);
  const io::TensorInfo& a = f.at("base_model.model.layers.0.attn.q_proj.lora_A.weight");
  const io::TensorInfo& b = f.at("base_model.model.layers.0.attn.q_proj.lora_B.weight");
  CHECK(a.dtype == io::Dtype::F32);
  CHECK(a.shape == std::vector<std::uint64_t>{4, 32});
  CHECK(b.shape == std::vector<std::uint64_t>{48, 4});

  const auto back = io::read_adapter(f);
  REQUIRE(back.size() == 2);
  const std::pair<const char*, const loftq::Result<float>*> cases[] = {{"layers.0.attn.q_proj.weight", &rq},
                                                                       {"layers.0.attn.o_proj.weight", &ro}};
  for (const auto& [name, res] : cases) {
    CAPTURE(name);
    const io::LoraFactors& lf = back.at(name);
    const loftq::PeftLora<float> p = loftq::to_peft(*res, alpha);
    CHECK(lf.lora_A == p.lora_A);  // bit for bit
    CHECK(lf.lora_B == p.lora_B);
    const Eigen::MatrixXd delta = (alpha / r) * lf.lora_B.cast<double>() * lf.lora_A.cast<double>();
    const Eigen::MatrixXd AB = res->A.cast<double>() * res->B.cast<double>().transpose();
    CHECK((delta - AB).norm() <= 1e-5 * AB.norm());
  }
}

TEST_CASE("adapter writer refuses what it cannot write") {
  const std::string path = scratch("bad_adapter.safetensors");
  CHECK(error_code_of([&] { io::AdapterWriter(path, {{"q.weight", 8, 8}}, 0); }) == loftq::Errc::invalid_argument);
  CHECK(error_code_of([&] {
          io::AdapterWriter(path, {{"q.weight", 8, 8}, {"q.weight", 8, 8}}, 2);
        }) == loftq::Errc::invalid_argument);
  CHECK(error_code_of([&] { io::AdapterWriter(path, {{"q.bias", 8, 8}}, 2); }) == loftq::Errc::invalid_argument);
  io::AdapterWriter w(path, {{"q.weight", 8, 6}}, 2);
  loftq::PeftLora<float> p;
  p.lora_A = Eigen::MatrixXf::Ones(2, 5);  // in is 6
  p.lora_B = Eigen::MatrixXf::Ones(8, 2);
  CHECK(error_code_of([&] { w.write("q.weight", p); }) == loftq::Errc::invalid_argument);
  CHECK(error_code_of([&] { w.write("k.weight", p); }) == loftq::Errc::invalid_argument);
  // Not every byte written: commit refuses and nothing appears.
  CHECK(error_code_of([&] { w.commit(); }) == loftq::Errc::invalid_argument);
  CHECK(!fs::exists(path));
}

TEST_CASE("adapter_config.json: PEFT's LoraConfig, round trip") {
  io::LoraConfig c;
  c.r = 8;
  c.lora_alpha = 16;
  c.target_modules = {"q_proj", "v_proj"};
  c.task_type = io::peft_task_type(nlohmann::json{{"architectures", {"LlamaForCausalLM"}}});
  const nlohmann::json j = io::adapter_config_json(c);
  CHECK(j["peft_type"] == "LORA");
  CHECK(j["lora_alpha"].is_number_integer());  // PEFT's type is int
  CHECK(j["init_lora_weights"] == true);       // the saved factors are the initialization
  CHECK(j["task_type"] == "CAUSAL_LM");
  CHECK(j["base_model_name_or_path"].is_null());
  const std::string path = scratch("adapter_config.json");
  io::write_adapter_config(path, c);
  const io::LoraConfig back = io::parse_adapter_config(nlohmann::json::parse(std::ifstream(path)));
  CHECK(back.r == c.r);
  CHECK(back.lora_alpha == c.lora_alpha);
  CHECK(back.target_modules == c.target_modules);
  CHECK(back.task_type == c.task_type);
  CHECK(back.base_model_name_or_path.empty());
  // A non-integral alpha stays a number; the file is never overwritten.
  c.lora_alpha = 2.5;
  CHECK(io::parse_adapter_config(io::adapter_config_json(c)).lora_alpha == 2.5);
  CHECK(error_code_of([&] { io::write_adapter_config(path, c); }) == loftq::Errc::io_error);

  CHECK(io::peft_task_type(nlohmann::json{{"architectures", {"BertForSequenceClassification"}}}) == "SEQ_CLS");
  CHECK(io::peft_task_type(nlohmann::json::object()).empty());
  c.r = 0;
  CHECK(error_code_of([&] { (void)io::adapter_config_json(c); }) == loftq::Errc::invalid_argument);
  nlohmann::json bad = j;
  bad["rank_pattern"] = {{"q_proj", 4}};
  CHECK(error_code_of([&] { (void)io::parse_adapter_config(bad); }) == loftq::Errc::parse_error);
  bad = j;
  bad["peft_type"] = "IA3";
  CHECK(error_code_of([&] { (void)io::parse_adapter_config(bad); }) == loftq::Errc::parse_error);
  CHECK(error_code_of([&] { (void)io::parse_adapter_config(nlohmann::json::array()); }) == loftq::Errc::parse_error);
}

}  // namespace test_peft
