// Package main is the cpu-memory scaling policy: the Kubernetes HorizontalPodAutoscaler rule
// over the CPU and memory utilisation of the worker pods, as a core WebAssembly module that
// speaks the JSON ABI of wit/CORE-ABI.md (Go cannot build components yet).
//
// Build: GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o cpu-memory.wasm .
// The host calls _initialize once per instance, then celery_policy_decide or
// celery_policy_validate_settings.
package main

import (
	"encoding/json"
	"fmt"
	"unsafe"
)

func main() {}

// keep holds the buffers handed to the host, so the garbage collector leaves them alone
// until the instance is dropped (the host makes a fresh instance for every call).
var keep [][]byte

//go:wasmexport celery_policy_abi_version
func abiVersion() int32 { return 1 }

//go:wasmexport celery_policy_alloc
func alloc(size int32) int32 {
	buf := make([]byte, size+1) // +1: never a zero-length slice, so the pointer is valid
	keep = append(keep, buf)
	return int32(uintptr(unsafe.Pointer(&buf[0])))
}

func output(v any) int64 {
	out, err := json.Marshal(v)
	if err != nil {
		out = []byte(`{"error":"cpu-memory: cannot encode the answer"}`)
	}
	keep = append(keep, out)
	ptr := uintptr(unsafe.Pointer(&out[0]))
	return int64(ptr)<<32 | int64(len(out))
}

func inputBytes(ptr, size int32) []byte {
	if size <= 0 {
		return nil
	}
	// NB: go vet flags this conversion; here it is the ABI: ptr came from celery_policy_alloc
	// and the buffer is still held in keep.
	return unsafe.Slice((*byte)(unsafe.Pointer(uintptr(ptr))), size)
}

type failure struct {
	Error string `json:"error"`
}

//go:wasmexport celery_policy_decide
func decideExport(ptr, size int32) int64 {
	var in Input
	if err := json.Unmarshal(inputBytes(ptr, size), &in); err != nil {
		return output(failure{fmt.Sprintf("cpu-memory: malformed input: %v", err)})
	}
	d, err := Decide(&in)
	if err != nil {
		return output(failure{err.Error()})
	}
	return output(d)
}

//go:wasmexport celery_policy_validate_settings
func validateExport(ptr, size int32) int64 {
	var settings map[string]string
	if err := json.Unmarshal(inputBytes(ptr, size), &settings); err != nil {
		return output(failure{fmt.Sprintf("cpu-memory: malformed settings: %v", err)})
	}
	if _, err := ParseSettings(settings); err != nil {
		return output(failure{err.Error()})
	}
	return output(struct {
		OK bool `json:"ok"`
	}{true})
}
