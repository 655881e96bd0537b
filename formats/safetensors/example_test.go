package safetensors_test

import (
	"bytes"
	"errors"
	"fmt"
	"log"
	"strings"

	"github.com/qconv/qconv/formats/dtype"
	"github.com/qconv/qconv/formats/safetensors"
)

func Example() {
	plan, err := safetensors.NewPlan(map[string]string{"format": "pt"}, []safetensors.TensorSpec{
		{Name: "weight", DType: dtype.U8, Shape: []int64{4, 1}},
		{Name: "absmax", DType: dtype.F32, Shape: []int64{1}},
	})
	if err != nil {
		log.Fatal(err)
	}
	var file bytes.Buffer
	w, err := safetensors.NewWriter(&file, plan)
	if err != nil {
		log.Fatal(err)
	}
	for _, t := range plan.Tensors { // absmax (F32) first: dtype order, descending
		w.Write(make([]byte, t.Size()))
	}
	if err := w.Close(); err != nil {
		log.Fatal(err)
	}
	fmt.Println(strings.TrimRight(string(plan.Header[8:]), " ")) // padded to a multiple of 8

	r, err := safetensors.NewReader(bytes.NewReader(file.Bytes()), int64(file.Len()))
	if err != nil {
		log.Fatal(err)
	}
	for _, t := range r.Tensors() {
		fmt.Println(t.Name, t.DType, t.Shape, t.Begin, t.End)
	}

	// One byte more, and the file is rejected with a typed error.
	bad := append(file.Bytes(), 0)
	_, err = safetensors.NewReader(bytes.NewReader(bad), int64(len(bad)))
	var fe *safetensors.FormatError
	if errors.As(err, &fe) {
		fmt.Println(fe.Code, "-", err)
	}
	// Output:
	// {"__metadata__":{"format":"pt"},"absmax":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"weight":{"dtype":"U8","shape":[4,1],"data_offsets":[4,8]}}
	// absmax F32 [1] 0 4
	// weight U8 [4 1] 4 8
	// trailing-bytes - safetensors: trailing bytes after the last tensor's data (1 of the 9 data bytes)
}
