"""Where a leaf's current value lives: one value per param, whichever target
wrote it last.

A param, optimizer state or constant always has its host array
(`tensor._value`). A device target (cuda) may add ONE flat device copy per
leaf, shared by every function that uses it (a training step and an
evaluation function see the same weights). Each copy records which side
holds the current value:

* a device step writes the copy and marks the host array stale; reading
  `tensor.value` (or a host target's next step) copies it back first;
* a host write (an interpreted or cpu step, `tensor.value = ...`) marks
  the device copy stale; the next device step sends it over first.

So a training loop on one target moves only its batches, and mixing
targets on the same params (train on cuda, predict on cpu) is always
correct. Host code must change a leaf through `.value = ...` or a step;
mutating the array that `.value` returned in place is not seen by a device
copy that already exists.
"""
import weakref

# How many device copies were ever made: while none was, host targets skip
# every residency check (a tiny cpu step is ~20 us; each check costs).
_copies_made = [0]


def any_device_copies():
    return _copies_made[0] > 0


class DeviceCopy:
    """The device copy of one leaf and which side is current."""
    __slots__ = ("array", "host_current", "device_current", "tensor", "__weakref__")

    def __init__(self, array, tensor):
        self.array = array
        self.host_current = True
        self.device_current = True
        self.tensor = weakref.ref(tensor)

    def to_host(self):
        """Make the host array current (after a device step wrote the copy)."""
        if not self.host_current:
            t = self.tensor()
            if t is not None:
                self.array.copy_to_host(t._value.reshape(-1))
            self.host_current = True

    def to_device(self):
        """Make the device copy current (after a host write)."""
        if not self.device_current:
            t = self.tensor()
            if t is not None:
                self.array.copy_to_device(t._value.reshape(-1))
            self.device_current = True

    def host_written(self):
        self.device_current = False
        self.host_current = True

    def device_written(self):
        self.host_current = False
        self.device_current = True


def device_array(t, upload):
    """The current device copy of leaf t, made with `upload(flat host
    array)` on first use."""
    if t._device is None:
        t._device = DeviceCopy(upload(t._value.reshape(-1)), t)
        _copies_made[0] += 1
    t._device.to_device()
    return t._device.array


def host_arrays(leaves):
    """Make the host arrays of `leaves` current; returns them."""
    for t in leaves:
        if t._device is not None:
            t._device.to_host()
    return [t._value for t in leaves]


def host_written(leaves):
    """A host step wrote new values of `leaves`."""
    for t in leaves:
        if t._device is not None:
            t._device.host_written()


def device_written(leaves):
    """A device step wrote new values of `leaves`."""
    for t in leaves:
        if t._device is not None:
            t._device.device_written()


def host_value(t):
    """t's current value as a new host array, without touching t's host copy."""
    d = t._device
    if d is None or d.host_current:
        return t._value.copy()
    return d.array.copy_to_host().reshape(t._value.shape)
