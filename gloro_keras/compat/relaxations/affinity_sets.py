"""gloro's `AffinitySet` (`gloro.relaxations.affinity_sets`)."""
import numpy as np

from gloro_keras.ops.relaxations import parse_affinity_sets


class AffinitySet:
    """Affinity sets as gloro held them: a one-hot (S, m) array of class sets.

    Build with `AffinitySet(one_hot)`, `AffinitySet.from_class_indices([[0, 2], [1], [3]])` or
    `AffinitySet.from_string("[0,2][1][3]")`; `str()` gives a string `from_string` reads back.
    """

    def __init__(self, one_hot_encoding):
        mask = np.asarray(one_hot_encoding)
        if mask.ndim != 2 or not np.all((mask == 0) | (mask == 1)):
            raise ValueError(f"AffinitySet takes a 0/1 array of shape (sets, classes). Received: {mask!r}")
        self._mask = mask.astype(np.int64)

    @classmethod
    def from_class_indices(cls, sets, num_classes=None):
        sets = parse_affinity_sets(sets, num_classes)
        m = num_classes if num_classes is not None else 1 + max(max(s) for s in sets)
        mask = np.zeros((len(sets), m), np.int64)
        for r, s in enumerate(sets):
            mask[r, list(s)] = 1
        return cls(mask)

    @classmethod
    def from_string(cls, string, num_classes=None):
        return cls.from_class_indices(parse_affinity_sets(string), num_classes)

    @classmethod
    def from_one_hot(cls, one_hot_encoding):
        return cls(one_hot_encoding)

    @property
    def mask(self):
        return self._mask

    @property
    def num_classes(self):
        return self._mask.shape[1]

    @property
    def max_set_size(self):
        return int(self._mask.sum(axis=1).max())

    def as_indices(self):
        return [np.flatnonzero(row).tolist() for row in self._mask]

    def __str__(self):
        return "".join("[" + ",".join(map(str, s)) + "]" for s in self.as_indices())

    def __repr__(self):
        return f"AffinitySet({self})"
