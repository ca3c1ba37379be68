package main

// A small JSON reader and writer for the two documents this policy exchanges with the host.
//
// encoding/json works, but it costs ten times the decision itself: the host makes a fresh
// instance for every decision, so its reflection caches start empty every time, and it
// validates and walks the whole input, history window included, which this policy never
// reads. This reader decodes only the fields the policy uses and passes over the rest,
// rejecting input it cannot read with the byte offset at fault.

import (
	"fmt"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"
)

type reader struct {
	b   []byte
	pos int
}

func (r *reader) fail(format string, args ...any) error {
	return fmt.Errorf("at byte %d: %s", r.pos, fmt.Sprintf(format, args...))
}

func (r *reader) space() {
	for r.pos < len(r.b) {
		switch r.b[r.pos] {
		case ' ', '\t', '\n', '\r':
			r.pos++
		default:
			return
		}
	}
}

// peek returns the next significant byte, or 0 at the end.
func (r *reader) peek() byte {
	r.space()
	if r.pos < len(r.b) {
		return r.b[r.pos]
	}
	return 0
}

func (r *reader) expect(c byte) error {
	if r.peek() != c {
		return r.fail("expected %q", c)
	}
	r.pos++
	return nil
}

// literal consumes `word` (true, false, null) if it comes next.
func (r *reader) literal(word string) bool {
	r.space()
	if len(r.b)-r.pos >= len(word) && string(r.b[r.pos:r.pos+len(word)]) == word {
		r.pos += len(word)
		return true
	}
	return false
}

// object calls field for every key; field must consume the value. The key is only valid
// during the call: it may be a slice of the input.
func (r *reader) object(field func(key []byte) error) error {
	return r.sequence('{', '}', func() error {
		key, err := r.rawStr()
		if err != nil {
			return err
		}
		if err := r.expect(':'); err != nil {
			return err
		}
		return field(key)
	})
}

// array calls item for every element; item must consume it.
func (r *reader) array(item func() error) error {
	return r.sequence('[', ']', item)
}

// sequence reads open, then entries separated by commas until close, each read by entry.
func (r *reader) sequence(open, close byte, entry func() error) error {
	if err := r.expect(open); err != nil {
		return err
	}
	if r.peek() == close {
		r.pos++
		return nil
	}
	for {
		if err := entry(); err != nil {
			return err
		}
		switch r.peek() {
		case ',':
			r.pos++
		case close:
			r.pos++
			return nil
		default:
			return r.fail("expected ',' or '%c'", close)
		}
	}
}

func (r *reader) str() (string, error) {
	s, err := r.rawStr()
	return string(s), err
}

// rawStr reads a string without copying it when it has no escapes (the common case).
func (r *reader) rawStr() ([]byte, error) {
	if err := r.expect('"'); err != nil {
		return nil, err
	}
	start := r.pos
	for r.pos < len(r.b) {
		switch c := r.b[r.pos]; {
		case c == '"':
			r.pos++
			return r.b[start : r.pos-1], nil
		case c == '\\':
			return r.escaped(start)
		case c < 0x20:
			return nil, r.fail("control character in a string")
		default:
			r.pos++
		}
	}
	return nil, r.fail("unterminated string")
}

// escaped finishes a string that has escapes, from its first byte at start.
func (r *reader) escaped(start int) ([]byte, error) {
	out := append([]byte(nil), r.b[start:r.pos]...)
	for r.pos < len(r.b) {
		c := r.b[r.pos]
		switch {
		case c == '"':
			r.pos++
			return out, nil
		case c < 0x20:
			return nil, r.fail("control character in a string")
		case c != '\\':
			out = append(out, c)
			r.pos++
			continue
		}
		if r.pos+1 >= len(r.b) {
			break
		}
		r.pos += 2
		switch e := r.b[r.pos-1]; e {
		case '"', '\\', '/':
			out = append(out, e)
		case 'b':
			out = append(out, '\b')
		case 'f':
			out = append(out, '\f')
		case 'n':
			out = append(out, '\n')
		case 'r':
			out = append(out, '\r')
		case 't':
			out = append(out, '\t')
		case 'u':
			u, ok := r.hex4()
			if !ok {
				return nil, r.fail("bad \\u escape")
			}
			if utf16.IsSurrogate(u) {
				if r.pos+1 < len(r.b) && r.b[r.pos] == '\\' && r.b[r.pos+1] == 'u' {
					r.pos += 2
					low, ok := r.hex4()
					if !ok {
						return nil, r.fail("bad \\u escape")
					}
					u = utf16.DecodeRune(u, low)
				} else {
					u = utf8.RuneError
				}
			}
			out = utf8.AppendRune(out, u)
		default:
			return nil, r.fail("bad escape \\%c", e)
		}
	}
	return nil, r.fail("unterminated string")
}

func (r *reader) hex4() (rune, bool) {
	if len(r.b)-r.pos < 4 {
		return 0, false
	}
	var n rune
	for _, c := range r.b[r.pos : r.pos+4] {
		switch {
		case c >= '0' && c <= '9':
			n = n<<4 | rune(c-'0')
		case c >= 'a' && c <= 'f':
			n = n<<4 | rune(c-'a'+10)
		case c >= 'A' && c <= 'F':
			n = n<<4 | rune(c-'A'+10)
		default:
			return 0, false
		}
	}
	r.pos += 4
	return n, true
}

// number returns the bytes of the number that comes next.
func (r *reader) number() ([]byte, error) {
	r.space()
	start := r.pos
	for r.pos < len(r.b) && isNumberByte(r.b[r.pos]) {
		r.pos++
	}
	if r.pos == start {
		return nil, r.fail("expected a number")
	}
	return r.b[start:r.pos], nil
}

func isNumberByte(c byte) bool {
	return (c >= '0' && c <= '9') || c == '-' || c == '+' || c == '.' || c == 'e' || c == 'E'
}

func (r *reader) uint(bits int) (uint64, error) {
	digits, err := r.number()
	if err != nil {
		return 0, err
	}
	limit := uint64(1)<<bits - 1
	var n uint64
	for _, c := range digits {
		if c < '0' || c > '9' || n > (limit-uint64(c-'0'))/10 {
			r.pos -= len(digits) // point at the number, not past it
			return 0, r.fail("expected a whole number of %d bits, got %s", bits, digits)
		}
		n = n*10 + uint64(c-'0')
	}
	return n, nil
}

// optionalUint reads a number or null (nil).
func (r *reader) optionalUint() (*uint64, error) {
	if r.literal("null") {
		return nil, nil
	}
	n, err := r.uint(64)
	if err != nil {
		return nil, err
	}
	return &n, nil
}

func (r *reader) boolean() (bool, error) {
	switch {
	case r.literal("true"):
		return true, nil
	case r.literal("false"):
		return false, nil
	}
	return false, r.fail("expected true or false")
}

// skip consumes one value of any kind. Objects and arrays are passed over in one loop that
// only checks that strings end and brackets balance: the history window is most of the input
// and nothing in it is read.
func (r *reader) skip() error {
	switch c := r.peek(); {
	case c == '{' || c == '[':
		return r.skipNested()
	case c == '"':
		_, err := r.rawStr()
		return err
	case c == '-' || (c >= '0' && c <= '9'):
		_, err := r.number()
		return err
	case r.literal("true"), r.literal("false"), r.literal("null"):
		return nil
	}
	return r.fail("expected a value")
}

func (r *reader) skipNested() error {
	var open [64]byte // the closing bracket expected at each depth
	depth := 0
	for r.pos < len(r.b) {
		c := r.b[r.pos]
		r.pos++
		switch c {
		case '{', '[':
			if depth == len(open) {
				return r.fail("nested too deeply")
			}
			open[depth] = c + 2 // '{'+2 is '}', '['+2 is ']'
			depth++
		case '}', ']':
			if depth == 0 || open[depth-1] != c {
				return r.fail("unbalanced %q", c)
			}
			depth--
			if depth == 0 {
				return nil
			}
		case '"':
			for r.pos < len(r.b) && r.b[r.pos] != '"' {
				if r.b[r.pos] == '\\' {
					r.pos++
				}
				r.pos++
			}
			if r.pos >= len(r.b) {
				return r.fail("unterminated string")
			}
			r.pos++
		}
	}
	return r.fail("unterminated %q", open[depth-1]-2)
}

// end checks that nothing but white space follows the document.
func (r *reader) end() error {
	if r.peek() != 0 {
		return r.fail("unexpected data after the document")
	}
	return nil
}

// document reads one whole JSON document from b with read, refusing anything after it.
func document(b []byte, read func(r *reader) error) error {
	r := &reader{b: b}
	if err := read(r); err != nil {
		return err
	}
	return r.end()
}

// decodeInput reads the JSON form of the WIT input record (the fields this policy uses).
func decodeInput(b []byte) (Input, error) {
	var in Input
	err := document(b, func(r *reader) error { return decodeInputObject(r, &in) })
	return in, err
}

func decodeInputObject(r *reader, in *Input) error {
	return r.object(func(key []byte) error {
		switch string(key) {
		case "currentReplicas":
			n, err := r.uint(32)
			in.CurrentReplicas = uint32(n)
			return err
		case "current":
			return r.object(func(key []byte) error {
				if string(key) != "pods" {
					return r.skip()
				}
				return r.array(func() error {
					pod, err := decodePod(r)
					in.Current.Pods = append(in.Current.Pods, pod)
					return err
				})
			})
		case "settings":
			var err error
			in.Settings, err = decodeSettings(r)
			return err
		}
		return r.skip()
	})
}

func decodePod(r *reader) (Pod, error) {
	var p Pod
	err := r.object(func(key []byte) error {
		var err error
		switch string(key) {
		case "name":
			p.Name, err = r.str()
		case "ready":
			p.Ready, err = r.boolean()
		case "cpuMillis":
			p.CPUMillis, err = r.optionalUint()
		case "cpuRequestMillis":
			p.CPURequestMillis, err = r.optionalUint()
		case "memoryBytes":
			p.MemoryBytes, err = r.optionalUint()
		case "memoryRequestBytes":
			p.MemoryRequestBytes, err = r.optionalUint()
		default:
			err = r.skip()
		}
		return err
	})
	return p, err
}

// decodeSettingsDocument reads validate's document: the settings alone.
func decodeSettingsDocument(b []byte) (map[string]string, error) {
	var settings map[string]string
	err := document(b, func(r *reader) (err error) {
		settings, err = decodeSettings(r)
		return err
	})
	return settings, err
}

// decodeSettings reads an object of string values.
func decodeSettings(r *reader) (map[string]string, error) {
	settings := map[string]string{}
	err := r.object(func(key []byte) error {
		value, err := r.str()
		settings[string(key)] = value
		return err
	})
	return settings, err
}

// appendString writes s as a JSON string.
func appendString(out []byte, s string) []byte {
	const hex = "0123456789abcdef"
	out = append(out, '"')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '"' || c == '\\':
			out = append(out, '\\', c)
		case c < 0x20:
			out = append(out, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		default:
			out = append(out, c)
		}
	}
	return append(out, '"')
}

func encodeDecision(d Decision) []byte {
	out := append(make([]byte, 0, 64+len(d.Reason)), `{"replicas":`...)
	out = strconv.AppendUint(out, uint64(d.Replicas), 10)
	out = append(out, `,"reason":`...)
	out = appendString(out, d.Reason)
	return append(out, '}')
}

func encodeError(message string) []byte {
	return append(appendString(append([]byte(nil), `{"error":`...), message), '}')
}
