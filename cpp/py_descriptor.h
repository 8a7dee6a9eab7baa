// nanobind side of quant/descriptor.h: a Python descriptor dict (DType.descriptor()) -> Descriptor.
// Header-only, included by the binding files compiled into the _ext module.
#pragma once

#include <nanobind/nanobind.h>

#include <Python.h>

#include <string>

#include "quant/descriptor.h"

namespace quantconv::py {

namespace nb = nanobind;

inline quant::DescriptorValue descriptor_value(nb::handle h) {
    using Kind = quant::DescriptorValue::Kind;
    quant::DescriptorValue v;
    if (h.is_none()) {
        v.kind = Kind::None;
        v.text = "None";
        return v;
    }
    v.text = nb::str(h).c_str();
    if (PyBool_Check(h.ptr())) {
        v.kind = Kind::Int;
        v.i = h.ptr() == Py_True ? 1 : 0;
    } else if (PyFloat_Check(h.ptr())) {
        v.kind = Kind::Float;
        v.f = PyFloat_AsDouble(h.ptr());
    } else if (PyUnicode_Check(h.ptr()) || PyBytes_Check(h.ptr())) {
        v.kind = Kind::Str;
    } else if (int64_t i; nb::try_cast<int64_t>(h, i)) {  // int, numpy integers (__index__)
        v.kind = Kind::Int;
        v.i = i;
        v.f = static_cast<double>(i);
    } else if (double f; nb::try_cast<double>(h, f)) {  // numpy floats
        v.kind = Kind::Float;
        v.f = f;
    } else if (PyList_Check(h.ptr()) || PyTuple_Check(h.ptr()) || nb::hasattr(h, "__len__")) {
        v.kind = Kind::List;
        try {
            for (nb::handle e : h) {
                double x = 0.0;
                if (!nb::try_cast<double>(e, x)) v.list_numeric = false;
                v.list.push_back(x);
            }
        } catch (const std::exception&) {
            v.kind = Kind::Other;
        }
    } else {
        v.kind = Kind::Other;
    }
    return v;
}

// Keys that are not strings are ignored.
inline quant::Descriptor descriptor_from_dict(const nb::dict& d) {
    quant::Descriptor out;
    for (auto [k, val] : d) {
        if (!PyUnicode_Check(k.ptr())) continue;
        out[std::string(nb::str(k).c_str())] = descriptor_value(val);
    }
    return out;
}

}  // namespace quantconv::py
