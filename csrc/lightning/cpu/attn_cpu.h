// CPU kernels of lightning::attn (torch-free). Each call handles the work items
// [item_begin, item_end) of (sequence, head) pairs, so the binding can spread them over
// threads. Data is float or double (the binding widens half types once).
#pragma once

#include <cstdint>

#include "../attn_params.h"

namespace lightning {

void attn_fwd_cpu(const AttnParams& p, int64_t item_begin, int64_t item_end);
void attn_bwd_cpu(const AttnBwdParams& p, int64_t item_begin, int64_t item_end);
void attn_decode_cpu(const AttnDecodeParams& p, int64_t item_begin, int64_t item_end);

}  // namespace lightning
