package gguf

import (
	"encoding/binary"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// KV is one metadata key and its value. A file keeps its keys in order.
type KV struct {
	Key   string
	Value Value
}

// Value is a metadata value: a scalar, a string or an array.
type Value struct {
	typ  ValueType
	bits uint64 // scalars: the little-endian bits, zero-extended
	str  string
	arr  *Array
}

// Array is an array value. Fixed-size elements are kept in their encoded
// little-endian form, so a large array costs what it costs in the file.
type Array struct {
	elem   ValueType
	n      int
	raw    []byte   // fixed-size elements
	strs   []string // string elements
	arrays []Array  // nested arrays
}

// Scalar constructors.

func Uint8(v uint8) Value     { return Value{typ: TypeUint8, bits: uint64(v)} }
func Int8(v int8) Value       { return Value{typ: TypeInt8, bits: uint64(uint8(v))} }
func Uint16(v uint16) Value   { return Value{typ: TypeUint16, bits: uint64(v)} }
func Int16(v int16) Value     { return Value{typ: TypeInt16, bits: uint64(uint16(v))} }
func Uint32(v uint32) Value   { return Value{typ: TypeUint32, bits: uint64(v)} }
func Int32(v int32) Value     { return Value{typ: TypeInt32, bits: uint64(uint32(v))} }
func Float32(v float32) Value { return Value{typ: TypeFloat32, bits: uint64(math.Float32bits(v))} }
func Uint64(v uint64) Value   { return Value{typ: TypeUint64, bits: v} }
func Int64(v int64) Value     { return Value{typ: TypeInt64, bits: uint64(v)} }
func Float64(v float64) Value { return Value{typ: TypeFloat64, bits: math.Float64bits(v)} }
func String(s string) Value   { return Value{typ: TypeString, str: s} }
func Bool(v bool) Value {
	if v {
		return Value{typ: TypeBool, bits: 1}
	}
	return Value{typ: TypeBool}
}

// Type is the value's type.
func (v Value) Type() ValueType { return v.typ }

// Int returns an integer value (any integer type or bool) as int64.
func (v Value) Int() (int64, bool) {
	switch v.typ {
	case TypeUint8, TypeUint16, TypeUint32, TypeBool:
		return int64(v.bits), true
	case TypeUint64:
		if v.bits > math.MaxInt64 {
			return 0, false
		}
		return int64(v.bits), true
	case TypeInt8:
		return int64(int8(v.bits)), true
	case TypeInt16:
		return int64(int16(v.bits)), true
	case TypeInt32:
		return int64(int32(v.bits)), true
	case TypeInt64:
		return int64(v.bits), true
	}
	return 0, false
}

// Float returns a numeric value as float64.
func (v Value) Float() (float64, bool) {
	switch v.typ {
	case TypeFloat32:
		return float64(math.Float32frombits(uint32(v.bits))), true
	case TypeFloat64:
		return math.Float64frombits(v.bits), true
	}
	i, ok := v.Int()
	return float64(i), ok
}

// Str returns a string value.
func (v Value) Str() (string, bool) { return v.str, v.typ == TypeString }

// Array returns an array value.
func (v Value) Array() (*Array, bool) { return v.arr, v.typ == TypeArray }

func (v Value) String() string {
	switch v.typ {
	case TypeString:
		return strconv.Quote(v.str)
	case TypeArray:
		return v.arr.String()
	case TypeBool:
		return strconv.FormatBool(v.bits != 0)
	case TypeFloat32, TypeFloat64:
		f, _ := v.Float()
		return strconv.FormatFloat(f, 'g', -1, 64)
	}
	if v.typ == TypeUint64 {
		return strconv.FormatUint(v.bits, 10)
	}
	i, _ := v.Int()
	return strconv.FormatInt(i, 10)
}

// encodedSize is the number of bytes the value takes in a file, after its type.
func (v Value) encodedSize() int64 {
	switch v.typ {
	case TypeString:
		return 8 + int64(len(v.str))
	case TypeArray:
		return v.arr.encodedSize()
	}
	return int64(v.typ.scalarSize())
}

// NewArray builds an array of scalar or string values, all of type elem.
func NewArray(elem ValueType, vals []Value) (Value, error) {
	if !elem.valid() {
		return Value{}, fmt.Errorf("gguf: invalid array element type %d", uint32(elem))
	}
	a := &Array{elem: elem, n: len(vals)}
	sz := elem.scalarSize()
	for i, v := range vals {
		if v.typ != elem {
			return Value{}, fmt.Errorf("gguf: array element %d is %v, want %v", i, v.typ, elem)
		}
		switch {
		case elem == TypeString:
			a.strs = append(a.strs, v.str)
		case elem == TypeArray:
			a.arrays = append(a.arrays, *v.arr)
		default:
			a.raw = appendScalar(a.raw, v.bits, sz)
		}
	}
	return Value{typ: TypeArray, arr: a}, nil
}

// Len is the number of elements.
func (a *Array) Len() int { return a.n }

// Elem is the element type.
func (a *Array) Elem() ValueType { return a.elem }

// Index returns element i.
func (a *Array) Index(i int) Value {
	switch a.elem {
	case TypeString:
		return Value{typ: TypeString, str: a.strs[i]}
	case TypeArray:
		return Value{typ: TypeArray, arr: &a.arrays[i]}
	}
	sz := a.elem.scalarSize()
	var b [8]byte
	copy(b[:], a.raw[i*sz:(i+1)*sz])
	return Value{typ: a.elem, bits: binary.LittleEndian.Uint64(b[:])}
}

// Slice returns a new array holding the elements at the given indices, in order.
func (a *Array) Slice(indices []int) Value {
	out := &Array{elem: a.elem, n: len(indices)}
	sz := a.elem.scalarSize()
	for _, i := range indices {
		switch a.elem {
		case TypeString:
			out.strs = append(out.strs, a.strs[i])
		case TypeArray:
			out.arrays = append(out.arrays, a.arrays[i])
		default:
			out.raw = append(out.raw, a.raw[i*sz:(i+1)*sz]...)
		}
	}
	return Value{typ: TypeArray, arr: out}
}

func (a *Array) encodedSize() int64 {
	n := int64(4 + 8)
	switch a.elem {
	case TypeString:
		for _, s := range a.strs {
			n += 8 + int64(len(s))
		}
	case TypeArray:
		for i := range a.arrays {
			n += a.arrays[i].encodedSize()
		}
	default:
		n += int64(len(a.raw))
	}
	return n
}

func (a *Array) String() string {
	const show = 8
	var sb strings.Builder
	fmt.Fprintf(&sb, "[%v×%d:", a.elem, a.n)
	for i := 0; i < a.n && i < show; i++ {
		sb.WriteString(" ")
		sb.WriteString(a.Index(i).String())
	}
	if a.n > show {
		sb.WriteString(" …")
	}
	sb.WriteString("]")
	return sb.String()
}

// appendScalar appends the low size bytes of bits, little-endian.
func appendScalar(b []byte, bits uint64, size int) []byte {
	var buf [8]byte
	binary.LittleEndian.PutUint64(buf[:], bits)
	return append(b, buf[:size]...)
}

// WithCount returns an integer value of v's type holding n (cut to the
// type's size): a count rewritten in place keeps the type the file had.
func (v Value) WithCount(n int) Value {
	v.bits = uint64(n)
	if sz := v.typ.scalarSize(); sz < 8 {
		v.bits &= 1<<(8*sz) - 1
	}
	return v
}
