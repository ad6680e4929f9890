// lightning::attn forward on CUDA: one sweep, a=q, b=k, c=v (see sweep.h).
#include "attn_launch.h"
#include "sweep.h"

namespace lightning {

cudaError_t attn_fwd_cuda(const AttnParams& p, cudaStream_t stream) {
  SweepParams s = sweep_base(p);
  s.a = p.q, s.a_stride = p.q_stride;
  s.b = p.k, s.b_stride = p.k_stride;
  s.c = p.v, s.c_stride = p.v_stride;
  s.out = p.o, s.out_stride = p.o_stride;
  s.width_ab = p.head_dim;
  s.width_c = p.value_dim;
  s.reverse = false;
  s.out_scale = s.inter_scale = static_cast<float>(p.scale);
  s.state_scale = 1.f;
  s.init_state = state_view(p.initial_state, p, false);
  s.final_state = state_view(p.final_state, p, false);
  return launch_sweep(s, stream);
}

}  // namespace lightning
