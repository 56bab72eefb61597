"""gloro's relaxation metrics (`gloro.relaxations.metrics`), defined with gloro's other
metrics in `gloro_keras.compat.training.metrics`."""
from gloro_keras.compat.training.metrics import (
    affinity_vra,
    affinity_vra_cat,
    affinity_vra_sparse,
    rtk_vra,
    rtk_vra_cat,
    rtk_vra_sparse,
    top_k_clean_acc,
    top_k_clean_acc_cat,
    top_k_clean_acc_sparse,
)

__all__ = ["affinity_vra", "affinity_vra_cat", "affinity_vra_sparse", "rtk_vra", "rtk_vra_cat", "rtk_vra_sparse",
           "top_k_clean_acc", "top_k_clean_acc_cat", "top_k_clean_acc_sparse"]
