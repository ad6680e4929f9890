// One instantiation of the sweep (see sweep_launch.cuh), in its own file for a parallel build.
#include "sweep_launch.cuh"

namespace lightning {
template cudaError_t launch_sweep_for<__half, 192>(const SweepParams&, cudaStream_t);
}  // namespace lightning
