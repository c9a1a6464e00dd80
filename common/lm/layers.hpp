#pragma once
// The layers of a llama2.c model, each as a _forward and a _backward (llm.c's
// shape): the forward fills the activations its backward needs, the backward
// takes the gradient of the layer's output and returns (or adds to) the
// gradient of its input. Matrices hold one row per position (T x features).
//
// Only LoRA factors are trained, so the backward passes produce gradients for
// activations and LoRA factors, never for base weights.

#include <loftq/error.hpp>

#include <Eigen/Core>
#include <cmath>
#include <vector>

#include "common/llama2c.hpp"

namespace lm {

// PEFT's LoRA on one linear: y = x W^T + scaling * (x A^T) B^T.
template <class S>
struct Adapter {
  Mat<S> A;  // lora_A, r x in
  Mat<S> B;  // lora_B, out x r
  S scaling = S(1);
  bool active() const { return A.size() > 0; }
};

// eps is Config::rms_eps (llama2.c's 1e-5 unless the checkpoint says otherwise).
template <class S>
void rmsnorm_forward(const Mat<S>& x, const Vec<S>& w, double eps, Mat<S>& out, Vec<S>& rstd) {
  const Eigen::Index T = x.rows(), d = x.cols();
  out.resize(T, d);
  rstd.resize(T);
  for (Eigen::Index t = 0; t < T; ++t) {
    S ss = 0;
    for (Eigen::Index j = 0; j < d; ++j) ss += x(t, j) * x(t, j);
    ss = ss / static_cast<S>(d) + static_cast<S>(eps);
    rstd(t) = S(1) / std::sqrt(ss);
    for (Eigen::Index j = 0; j < d; ++j) out(t, j) = w(j) * (rstd(t) * x(t, j));
  }
}

// y_j = w_j x_j r with r = (mean(x^2) + eps)^(-1/2), so
// dx_j = r w_j dy_j - x_j r^3 / d * sum_i dy_i w_i x_i. Adds into dx.
template <class S>
void rmsnorm_backward(const Mat<S>& dout, const Mat<S>& x, const Vec<S>& w, const Vec<S>& rstd, Mat<S>& dx) {
  const Eigen::Index T = x.rows(), d = x.cols();
  for (Eigen::Index t = 0; t < T; ++t) {
    const S r = rstd(t);
    S dot = 0;
    for (Eigen::Index j = 0; j < d; ++j) dot += dout(t, j) * w(j) * x(t, j);
    const S c = r * r * r * dot / static_cast<S>(d);
    for (Eigen::Index j = 0; j < d; ++j) dx(t, j) += r * w(j) * dout(t, j) - c * x(t, j);
  }
}

// u = x A^T is kept: the backward pass needs it for lora_B's gradient.
template <class S>
void linear_forward(const Mat<S>& x, const Mat<S>& W, const Adapter<S>* ad, Mat<S>& y, Mat<S>& u) {
  y.noalias() = x * W.transpose();
  if (ad && ad->active()) {
    u.noalias() = x * ad->A.transpose();
    y.noalias() += ad->scaling * (u * ad->B.transpose());
  }
}

// dx = dy W + scaling (dy B) A (assigned, or added when `accumulate`), and
// the adapter's gradients are added into `grad`.
template <class S>
void linear_backward(const Mat<S>& dy, const Mat<S>& x, const Mat<S>& W, const Adapter<S>* ad, const Mat<S>& u,
                     Adapter<S>* grad, Mat<S>& dx, bool accumulate) {
  if (accumulate)
    dx.noalias() += dy * W;
  else
    dx.noalias() = dy * W;
  if (ad && ad->active()) {
    const Mat<S> g = dy * ad->B;  // gradient of u, before scaling
    grad->B.noalias() += ad->scaling * (dy.transpose() * u);
    grad->A.noalias() += ad->scaling * (g.transpose() * x);
    dx.noalias() += ad->scaling * (g * ad->A);
  }
}

// cos/sin of position t times the frequency of pair p (0 .. head_size/2-1),
// computed as run.c does rather than read from the checkpoint's tables;
// evaluated in double so float and double models rotate by the same angles.
// theta is Config::rope_theta (run.c's 10000 unless the checkpoint says otherwise).
template <class S>
struct RopeTable {
  Mat<S> cos, sin;  // T x head_size/2
  RopeTable(Eigen::Index T, int head_size, double theta) : cos(T, head_size / 2), sin(T, head_size / 2) {
    for (Eigen::Index t = 0; t < T; ++t)
      for (int p = 0; p < head_size / 2; ++p) {
        const double freq = 1.0 / std::pow(theta, static_cast<double>(2 * p) / head_size);
        const double a = static_cast<double>(t) * freq;
        cos(t, p) = static_cast<S>(std::cos(a));
        sin(t, p) = static_cast<S>(std::sin(a));
      }
  }
};

// Rotates each interleaved pair (i, i+1) of every head by +angle (forward)
// or -angle (backward: the rotation is orthogonal, its transpose inverts it).
template <class S>
void rope_apply(Mat<S>& M, const RopeTable<S>& rt, int head_size, bool inverse) {
  const Eigen::Index T = M.rows(), n = M.cols();
  for (Eigen::Index t = 0; t < T; ++t)
    for (Eigen::Index i = 0; i < n; i += 2) {
      const int p = static_cast<int>(i % head_size) / 2;
      const S c = rt.cos(t, p), s = inverse ? -rt.sin(t, p) : rt.sin(t, p);
      const S v0 = M(t, i), v1 = M(t, i + 1);
      M(t, i) = v0 * c - v1 * s;
      M(t, i + 1) = v0 * s + v1 * c;
    }
}

// Causal multi-head attention with grouped-query heads. Pt[h] is head h's
// matrix of attention probabilities, transposed (T x T, column t = query t's
// distribution over keys, zero below key t): each query's softmax is then a
// contiguous column, which Eigen's vectorized exp can take whole.
template <class S>
void attention_forward(const Config& c, const Mat<S>& q, const Mat<S>& k, const Mat<S>& v, std::vector<Mat<S>>& Pt,
                       Mat<S>& out) {
  const Eigen::Index T = q.rows();
  const int hs = c.head_size(), group = c.n_heads / c.n_kv_heads;
  const S scale = S(1) / std::sqrt(static_cast<S>(hs));
  Pt.resize(static_cast<std::size_t>(c.n_heads));
  out.resize(T, c.dim);
  for (int h = 0; h < c.n_heads; ++h) {
    const int g = h / group;
    Mat<S>& A = Pt[static_cast<std::size_t>(h)];
    A.noalias() = k.middleCols(g * hs, hs) * q.middleCols(h * hs, hs).transpose();
    for (Eigen::Index t = 0; t < T; ++t) {
      auto col = A.col(t).head(t + 1);
      col *= scale;
      const S mx = col.maxCoeff();
      col = (col.array() - mx).exp().matrix();
      col /= col.sum();
      A.col(t).tail(T - t - 1).setZero();
    }
    out.middleCols(h * hs, hs).noalias() = A.transpose() * v.middleCols(g * hs, hs);
  }
}

// Softmax backward per query: dS = P o (dP - sum(P o dP)); the zeros of P
// past the query keep the causal mask. Heads run in a fixed order, so the
// sums into shared key/value heads round the same way every time.
template <class S>
void attention_backward(const Config& c, const Mat<S>& dout, const Mat<S>& q, const Mat<S>& k, const Mat<S>& v,
                        const std::vector<Mat<S>>& Pt, Mat<S>& dq, Mat<S>& dk, Mat<S>& dv) {
  const Eigen::Index T = q.rows();
  const int hs = c.head_size(), group = c.n_heads / c.n_kv_heads;
  const S scale = S(1) / std::sqrt(static_cast<S>(hs));
  dq = Mat<S>::Zero(T, q.cols());
  dk = Mat<S>::Zero(T, k.cols());
  dv = Mat<S>::Zero(T, v.cols());
  Mat<S> dPt;  // transposed like Pt: (key s, query t)
  for (int h = 0; h < c.n_heads; ++h) {
    const int g = h / group;
    const Mat<S>& A = Pt[static_cast<std::size_t>(h)];
    const auto dO = dout.middleCols(h * hs, hs);
    dPt.noalias() = v.middleCols(g * hs, hs) * dO.transpose();
    dv.middleCols(g * hs, hs).noalias() += A * dO;
    for (Eigen::Index t = 0; t < T; ++t) {
      const auto p = A.col(t).head(t + 1).array();
      auto d = dPt.col(t).head(t + 1).array();
      const S dot = (p * d).sum();
      d = p * (d - dot) * scale;
      dPt.col(t).tail(T - t - 1).setZero();
    }
    dq.middleCols(h * hs, hs).noalias() += dPt.transpose() * k.middleCols(g * hs, hs);
    dk.middleCols(g * hs, hs).noalias() += dPt * q.middleCols(h * hs, hs);
  }
}

// hh = silu(h1) * h3, as run.c, with silu(a) = a / (1 + exp(-a)).
template <class S>
void swiglu_forward(const Mat<S>& h1, const Mat<S>& h3, Mat<S>& hh) {
  const auto a = h1.array();
  hh = (a / (S(1) + (-a).exp()) * h3.array()).matrix();
}

// silu'(a) = sigma(a) (1 + a (1 - sigma(a))).
template <class S>
void swiglu_backward(const Mat<S>& dhh, const Mat<S>& h1, const Mat<S>& h3, Mat<S>& dh1, Mat<S>& dh3) {
  const auto a = h1.array();
  const Eigen::Array<S, Eigen::Dynamic, Eigen::Dynamic> sg = S(1) / (S(1) + (-a).exp());
  dh3 = (dhh.array() * a * sg).matrix();
  dh1 = (dhh.array() * h3.array() * sg * (S(1) + a * (S(1) - sg))).matrix();
}

}  // namespace lm
