// x itself, as an XLA FFI handler XLA cannot see through: a fusion barrier on XLA:CPU
// (jaxnets/kernels/fusion_barrier.py says why). The result is aliased to the operand
// (input_output_aliases), so where XLA can hand the operand's buffer over there is nothing to do;
// where it cannot (the operand is read again later), XLA gives the call its own copy or the call
// copies it here.
#include <cstring>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

ffi::Error MaterializeImpl(ffi::AnyBuffer x, ffi::Result<ffi::AnyBuffer> y) {
  if (x.size_bytes() != y->size_bytes())
    return ffi::Error::InvalidArgument("fusion_barrier: operand and result sizes differ");
  if (x.untyped_data() != y->untyped_data()) std::memcpy(y->untyped_data(), x.untyped_data(), x.size_bytes());
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(Materialize, MaterializeImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()    // x
                                  .Ret<ffi::AnyBuffer>());  // x, the same bytes
