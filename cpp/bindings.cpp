#include <nanobind/nanobind.h>
namespace nb = nanobind;
NB_MODULE(_ext, m) { m.def("version", []() { return "0.1.0"; }); }
