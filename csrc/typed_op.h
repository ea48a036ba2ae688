// The dispatcher's handle of a pycnn operator, for calls from C++ that go
// through every dispatch key (autograd, torch.func, fake tensors, ...) as a
// call from Python does.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>

namespace pycnn {

// The operator "pycnn::<name>" with the C++ signature Signature; throws if the
// schema is not registered (or the signature does not match it).
template <typename Signature>
c10::TypedOperatorHandle<Signature> typed_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

}  // namespace pycnn
