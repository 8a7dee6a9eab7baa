// TEMP stub
#include "kernels/internal.h"
namespace quantconv::kernels {
const KernelTable& avx2_table() { static KernelTable t = [] { KernelTable k = scalar_table(); k.isa = Isa::AVX2; return k; }(); return t; }
const KernelTable& avx512_table() { static KernelTable t = [] { KernelTable k = scalar_table(); k.isa = Isa::AVX512; return k; }(); return t; }
}
