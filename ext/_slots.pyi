import numpy as np
import numpy.typing as npt

def key_slots(head: bytes, hashes: npt.NDArray[np.uint64]) -> npt.NDArray[np.int64]: ...
