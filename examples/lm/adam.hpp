#pragma once
// Adam over the LoRA factors, with torch.optim.Adam's defaults and update
// rule (bias-corrected moments, eps added to the corrected second moment's
// square root, weight decay as an L2 term added to the gradient).

#include <cmath>

#include "common/lm/model.hpp"

namespace lm {

template <class S>
class Adam {
 public:
  explicit Adam(double lr, double beta1 = 0.9, double beta2 = 0.999, double eps = 1e-8, double weight_decay = 0)
      : lr_(lr), b1_(beta1), b2_(beta2), eps_(eps), wd_(weight_decay) {}

  void step(Lora<S>& params, const Lora<S>& grad) {
    if (t_ == 0) {
      m_ = params.zeros_like();
      v_ = params.zeros_like();
    }
    ++t_;
    const double c1 = 1 - std::pow(b1_, t_), c2 = 1 - std::pow(b2_, t_);
    const S b1 = static_cast<S>(b1_), b2 = static_cast<S>(b2_), wd = static_cast<S>(wd_);
    const S step = static_cast<S>(lr_ / c1), sqrt_c2 = static_cast<S>(std::sqrt(c2)), eps = static_cast<S>(eps_);
    for (std::size_t l = 0; l < params.layers.size(); ++l)
      for (int k = 0; k < kKinds; ++k) {
        Adapter<S>& p = params.layers[l][k];
        if (!p.active()) continue;
        update(p.A, grad.layers[l][k].A, m_.layers[l][k].A, v_.layers[l][k].A, b1, b2, wd, step, sqrt_c2, eps);
        update(p.B, grad.layers[l][k].B, m_.layers[l][k].B, v_.layers[l][k].B, b1, b2, wd, step, sqrt_c2, eps);
      }
  }

  int steps() const { return t_; }

 private:
  static void update(Mat<S>& p, const Mat<S>& g0, Mat<S>& m, Mat<S>& v, S b1, S b2, S wd, S step, S sqrt_c2, S eps) {
    for (Eigen::Index i = 0; i < p.size(); ++i) {
      const S g = g0.data()[i] + wd * p.data()[i];
      S& mi = m.data()[i];
      S& vi = v.data()[i];
      mi = b1 * mi + (S(1) - b1) * g;
      vi = b2 * vi + (S(1) - b2) * g * g;
      p.data()[i] -= step * mi / (std::sqrt(vi) / sqrt_c2 + eps);
    }
  }

  double lr_, b1_, b2_, eps_, wd_;
  int t_ = 0;
  Lora<S> m_, v_;
};

}  // namespace lm
