// Package main is the cpu-memory scaling policy: the Kubernetes HorizontalPodAutoscaler rule
// over the CPU and memory utilisation of the worker pods, as a core WebAssembly module that
// speaks the JSON ABI of wit/CORE-ABI.md (Go cannot build components yet).
//
// Build: GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o cpu-memory.wasm .
// The host runs _initialize once, at load, and snapshots the result; each decision then
// calls celery_policy_decide or celery_policy_validate_settings in a fresh instance.
// The JSON is read and written by json.go, not encoding/json (see there why).
package main

import "unsafe"

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

func output(out []byte) int64 {
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

//go:wasmexport celery_policy_decide
func decideExport(ptr, size int32) int64 {
	in, err := decodeInput(inputBytes(ptr, size))
	if err != nil {
		return output(encodeError("cpu-memory: malformed input: " + err.Error()))
	}
	d, err := Decide(&in)
	if err != nil {
		return output(encodeError(err.Error()))
	}
	return output(encodeDecision(d))
}

//go:wasmexport celery_policy_validate_settings
func validateExport(ptr, size int32) int64 {
	settings, err := decodeSettingsDocument(inputBytes(ptr, size))
	if err != nil {
		return output(encodeError("cpu-memory: malformed settings: " + err.Error()))
	}
	if _, err := ParseSettings(settings); err != nil {
		return output(encodeError(err.Error()))
	}
	return output([]byte(`{"ok":true}`))
}
