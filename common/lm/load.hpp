#pragma once
// Loading a LLaMA-architecture model whole into lm::Weights<float> from the
// three formats calibration takes (Hugging Face safetensors, GGUF, llama2.c;
// layer_source.hpp reads them, a layer at a time, and these read every
// layer through it), and calibration token ids from a .npy file.
//
// Files are untrusted: every shape is checked against the configuration,
// every weight must be finite, and each defect is a loftq::Error naming the
// path and the tensor.

#include <loftq/error.hpp>
#include <loftq/io/npy.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "common/lm/layer_source.hpp"
#include "common/lm/model.hpp"

namespace lm {

// A Hugging Face LLaMA/Mistral checkpoint directory (config.json plus
// model.safetensors or model.safetensors.index.json and its shards).
inline Weights<float> read_hf_checkpoint(const std::string& dir) {
  return LayerSource(dir, ModelFormat::hugging_face).read_all();
}

// A GGUF file of llama.cpp's llama architecture.
inline Weights<float> read_gguf_model(const std::string& path) {
  return LayerSource(path, ModelFormat::gguf).read_all();
}

// By the path: a directory (or a .safetensors file's directory) is a Hugging
// Face checkpoint, *.gguf is GGUF, anything else a llama2.c checkpoint.
inline Weights<float> read_model(const std::string& path) { return LayerSource(path).read_all(); }

// Token ids from a 2-D .npy of int32 or int64 (N sequences x T). Refuses ids
// outside 0..vocab_size-1 and T above the model's seq_len.
inline std::vector<std::vector<int>> read_tokens(const std::string& path, const Config& c) {
  const loftq::io::NpyMatrix<std::int64_t> ids = loftq::io::to_int_matrix(loftq::io::read_npy_integers(path), path);
  if (ids.rows() < 1 || ids.cols() < 1)
    throw loftq::Error(loftq::Errc::invalid_argument, path + ": the token array is empty");
  if (ids.cols() > c.seq_len)
    throw loftq::Error(loftq::Errc::invalid_argument, path + ": sequences of " + std::to_string(ids.cols()) +
                                                          " tokens exceed the model's context of " +
                                                          std::to_string(c.seq_len));
  std::vector<std::vector<int>> seqs(static_cast<std::size_t>(ids.rows()));
  for (Eigen::Index i = 0; i < ids.rows(); ++i) {
    auto& s = seqs[static_cast<std::size_t>(i)];
    s.reserve(static_cast<std::size_t>(ids.cols()));
    for (Eigen::Index t = 0; t < ids.cols(); ++t) {
      const std::int64_t id = ids(i, t);
      if (id < 0 || id >= c.vocab_size)
        throw loftq::Error(loftq::Errc::invalid_argument, path + ": token id " + std::to_string(id) + " (sequence " +
                                                              std::to_string(i) + ", position " + std::to_string(t) +
                                                              ") is outside the vocabulary of " +
                                                              std::to_string(c.vocab_size));
      s.push_back(static_cast<int>(id));
    }
  }
  return seqs;
}

}  // namespace lm
