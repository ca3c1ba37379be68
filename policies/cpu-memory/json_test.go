package main

import (
	"strings"
	"testing"
)

func TestDecodeInputReadsWhatThePolicyUses(t *testing.T) {
	in, err := decodeInput([]byte(` {"app":"a\"b","currentReplicas":3,"history":[{"pods":[{"name":"x}]"}],"queues":[]}],
		"current":{"timestampMs":1,"pods":[{"name":"w\u00e9-\ud83d\ude00\n","ready":true,"cpuMillis":450,
		"cpuRequestMillis":null,"memoryBytes":18446744073709551615,"activeTasks":2}]},"settings":{"cpu":"70%"}} `))
	if err != nil {
		t.Fatal(err)
	}
	if in.CurrentReplicas != 3 || len(in.Current.Pods) != 1 || in.Settings["cpu"] != "70%" {
		t.Fatalf("decoded %+v", in)
	}
	p := in.Current.Pods[0]
	if p.Name != "wé-😀\n" || !p.Ready || *p.CPUMillis != 450 || p.CPURequestMillis != nil || *p.MemoryBytes != 1<<64-1 {
		t.Fatalf("pod %+v", p)
	}
}

func TestMalformedInputIsRefusedWithItsOffset(t *testing.T) {
	for input, want := range map[string]string{
		`{"currentReplicas":-1}`:             "at byte 19: expected a whole number of 32 bits, got -1",
		`{"currentReplicas":4294967296}`:     "expected a whole number of 32 bits",
		`{"history":[{"a":1]}`:               "unbalanced ']'",
		`{"history":[{"a":"1}]}`:             "unterminated string",
		`{"current":{"pods":[{"ready":1}]}}`: "expected true or false",
		`{"settings":{"cpu":"70"}} x`:        "unexpected data after the document",
		`{"app":"\q"}`:                       `bad escape \q`,
		`{"app":"a` + "\x01" + `"}`:          "control character",
		`[]`:                                 `expected '{'`,
	} {
		_, err := decodeInput([]byte(input))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: got %v, want %q", input, err, want)
		}
	}
}

func TestAnswersAreValidJSON(t *testing.T) {
	got := string(encodeDecision(Decision{Replicas: 7, Reason: "CPU \"hot\" \\ 90% →\n"}))
	want := `{"replicas":7,"reason":"CPU \"hot\" \\ 90% →\u000a"}`
	if got != want {
		t.Fatalf("got %s, want %s", got, want)
	}
}
