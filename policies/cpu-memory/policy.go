package main

import (
	"errors"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
)

// Input is the WIT input record, as far as this policy reads it (decoded by json.go).
type Input struct {
	CurrentReplicas uint32
	Current         Sample
	Settings        map[string]string
}

type Sample struct {
	Pods []Pod
}

type Pod struct {
	Name               string
	Ready              bool
	CPUMillis          *uint64
	CPURequestMillis   *uint64
	MemoryBytes        *uint64
	MemoryRequestBytes *uint64
}

type Decision struct {
	Replicas uint32
	Reason   string
}

// Settings holds target utilisations in percent of the pods' requests; 0 means unset.
type Settings struct {
	CPU    uint64
	Memory uint64
}

// Tolerance is the HPA's default: within 10% of the target, nothing changes.
const Tolerance = 0.1

func ParseSettings(raw map[string]string) (Settings, error) {
	var s Settings
	keys := make([]string, 0, len(raw))
	for k := range raw {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(raw[k]), "%"))
		switch k {
		case "cpu", "memory":
			n, err := strconv.ParseUint(v, 10, 32)
			if err != nil || n == 0 {
				return s, fmt.Errorf("setting %s: target utilisation must be a positive whole percentage, got %q", k, raw[k])
			}
			if k == "cpu" {
				s.CPU = n
			} else {
				s.Memory = n
			}
		default:
			return s, fmt.Errorf("setting %s: unknown (known: cpu, memory)", k)
		}
	}
	if s.CPU == 0 && s.Memory == 0 {
		return s, errors.New("setting cpu: at least one of cpu or memory (target utilisation percent) is required")
	}
	return s, nil
}

// resource is one metric's view of the ready pods that report both usage and request.
type resource struct {
	name      string
	target    uint64
	pods      int
	usage     uint64
	requested uint64
}

func measure(name string, target uint64, pods []Pod, get func(Pod) (*uint64, *uint64)) resource {
	r := resource{name: name, target: target}
	for _, p := range pods {
		used, req := get(p)
		// Pods that are not ready, unmeasured or without a request are left out, as the HPA does.
		if !p.Ready || used == nil || req == nil || *req == 0 {
			continue
		}
		r.pods++
		r.usage += *used
		r.requested += *req
	}
	return r
}

// desired applies the HPA rule to one resource: ceil(pods × utilisation / target), unless
// the ratio is within the tolerance, where the current count stays.
func (r resource) desired(current uint32) (uint32, string) {
	utilisation := 100 * float64(r.usage) / float64(r.requested)
	ratio := utilisation / float64(r.target)
	pods := "pods"
	if r.pods == 1 {
		pods = "pod"
	}
	head := fmt.Sprintf("%s at %.0f%% of requests on %d %s, target %d%%", r.name, utilisation, r.pods, pods, r.target)
	if math.Abs(ratio-1) <= Tolerance {
		return current, fmt.Sprintf("%s: within 10%% → %d %s", head, current, workers(current))
	}
	want := math.Ceil(ratio * float64(r.pods))
	n := uint32(math.MaxUint32)
	if want < float64(math.MaxUint32) {
		n = uint32(want)
	}
	return n, fmt.Sprintf("%s → %d %s", head, n, workers(n))
}

func workers(n uint32) string {
	if n == 1 {
		return "worker"
	}
	return "workers"
}

func Decide(in *Input) (Decision, error) {
	s, err := ParseSettings(in.Settings)
	if err != nil {
		return Decision{}, err
	}
	var measured []resource
	var missing []string
	if s.CPU > 0 {
		r := measure("CPU", s.CPU, in.Current.Pods, func(p Pod) (*uint64, *uint64) { return p.CPUMillis, p.CPURequestMillis })
		if r.pods > 0 {
			measured = append(measured, r)
		} else {
			missing = append(missing, "CPU")
		}
	}
	if s.Memory > 0 {
		r := measure("memory", s.Memory, in.Current.Pods, func(p Pod) (*uint64, *uint64) { return p.MemoryBytes, p.MemoryRequestBytes })
		if r.pods > 0 {
			measured = append(measured, r)
		} else {
			missing = append(missing, "memory")
		}
	}
	if len(measured) == 0 {
		return Decision{}, fmt.Errorf("no usable %s metrics: none of the %d pods is ready with both usage and a request",
			strings.Join(missing, " or "), len(in.Current.Pods))
	}
	best := Decision{}
	for i, r := range measured {
		n, reason := r.desired(in.CurrentReplicas)
		if i == 0 || n > best.Replicas {
			best = Decision{n, reason}
		}
	}
	if len(missing) > 0 {
		best.Reason += fmt.Sprintf(" (no %s metrics)", strings.Join(missing, " or "))
	}
	return best, nil
}
