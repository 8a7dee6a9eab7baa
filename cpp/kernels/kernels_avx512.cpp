// AVX-512 table: for now the AVX2 kernels under the AVX-512 name (TEMP).
#include "kernels/internal.h"

namespace quantconv::kernels {

const KernelTable& avx512_table() {
    static const KernelTable t = [] {
        KernelTable k = avx2_table();
        k.isa = Isa::AVX512;
        return k;
    }();
    return t;
}

}  // namespace quantconv::kernels
