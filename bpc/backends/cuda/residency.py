"""Parameters, optimizer state and constants living on the device.

Each leaf gets ONE flat device copy, shared by every CUDA function that
uses it (a training step and an evaluation function see the same weights),
made the first time a function needs it. Steps write updates there and
only mark the host copy stale; the host copy is refreshed when someone
reads `tensor.value` (bpc's before-read hook: checkpoints, metrics, user
code), and a host assignment `tensor.value = ...` is pushed to the device
(the after-set hook). So a training loop moves only its batches and the
outputs it asks for.

Host code must change a leaf by assigning `.value`; mutating the array
that `.value` returned, in place, is not seen by the device copy.
"""
import weakref

from ...graph import tensor as tensor_module


class _Resident:
    __slots__ = ("device", "host_stale", "tensor")

    def __init__(self, device, tensor):
        self.device = device
        self.host_stale = False
        self.tensor = weakref.ref(tensor)


_resident = {}   # tensor id -> _Resident


def device_array(t):
    """The device copy of leaf t (flat, C order), made on first use."""
    r = _resident.get(t.id)
    if r is None:
        from numba import cuda
        r = _resident[t.id] = _Resident(cuda.to_device(t._value.reshape(-1)), t)
        weakref.finalize(t, _resident.pop, t.id, None)   # free device memory with the tensor
    return r.device


def is_resident(t):
    return t.id in _resident


def device_written(tensors):
    """A step wrote new values of `tensors` on the device."""
    for t in tensors:
        r = _resident.get(t.id)
        if r is not None:
            r.host_stale = True


def host_value(t):
    """t's current value as a new host array (not touching t's host copy)."""
    r = _resident.get(t.id)
    if r is None or not r.host_stale:
        return t._value.copy()
    return r.device.copy_to_host().reshape(t._value.shape)


def pull(t):
    """Refresh t's host copy from the device if a step changed it there."""
    r = _resident.get(t.id)
    if r is not None and r.host_stale:
        r.device.copy_to_host(t._value.reshape(-1))
        r.host_stale = False


def push(t):
    """Send t's host copy (just assigned) to the device."""
    r = _resident.get(t.id)
    if r is not None:
        r.device.copy_to_device(t._value.reshape(-1))
        r.host_stale = False


def synchronize():
    """Refresh the host copy of every resident leaf (e.g. before handing
    parameters to code that reads `._value` directly)."""
    for r in list(_resident.values()):
        t = r.tensor()
        if t is not None:
            pull(t)


def _install_hooks():
    if pull not in tensor_module._before_read_hooks:
        tensor_module._before_read_hooks.append(pull)
    if push not in tensor_module._after_set_hooks:
        tensor_module._after_set_hooks.append(push)


_install_hooks()
