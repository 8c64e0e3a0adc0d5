"""Model builders."""

from keras_dpn.models.dpn import (DPN, DPN1_32, DPN1_64, DPN2_32, DPN2_64, DPN3_32,
                                  DPN3_64, DPN4_32, DPN4_64, DPN_SPECS)
