package main

// warmUp runs the whole decision path once, on a representative input, while the host
// snapshots `_initialize` at load. A fresh instance then starts with the allocator's spans
// for the size classes a decision uses already set up and fmt's printer cached, instead of
// building them in every call: the Go runtime does that lazily, on first use, and in a fresh
// instance every use is the first. The answers are thrown away.
func warmUp() {
	in, err := decodeInput([]byte(warmInput))
	if err == nil {
		_, _ = Decide(&in)
		d, _ := Decide(&in)
		_ = encodeDecision(d)
	}
	_, _ = decodeSettingsDocument([]byte(`{"cpu":"70","memory":"80%"}`))
	_ = encodeError("warm-up")
}

func init() { warmUp() }

// warmInput has the shape of a real input: two pods with both metrics, settings for both
// resources, and a history entry the reader passes over.
const warmInput = `{"app":"ns/app","currentReplicas":2,"minReplicas":1,"maxReplicas":10,"concurrency":4,` +
	`"current":{"timestampMs":1764000000000,"replicas":2,"queues":[{"name":"celery","backlog":10,"reserved":2,"consumers":2}],` +
	`"pods":[{"name":"w-0","ready":true,"cpuMillis":450,"cpuRequestMillis":500,"memoryBytes":104857600,"memoryRequestBytes":134217728,"activeTasks":3},` +
	`{"name":"w-1","ready":true,"cpuMillis":300,"cpuRequestMillis":500,"memoryBytes":94857600,"memoryRequestBytes":134217728,"activeTasks":null}]},` +
	`"history":[{"timestampMs":1763999985000,"replicas":2,"queues":[],"pods":[]}],` +
	`"settings":{"cpu":"70","memory":"80"}}`
