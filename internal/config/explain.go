package config

import (
	"fmt"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"

	"go.yaml.in/yaml/v3"
)

// explain rewrites one of yaml's type errors ("line 7: cannot unmarshal
// !!str `443` into []uint16", "line 3: field tll not found in type
// config.CacheRule") in the user's words: the key path, the shape
// expected, a hint for the common mistakes, and a close known key for a
// misspelt one. It returns the line and the message.
func explain(root *yaml.Node, e string) (int, string) {
	rest, ok := strings.CutPrefix(e, "line ")
	if !ok {
		return 0, e
	}
	num, msg, _ := strings.Cut(rest, ": ")
	line, err := strconv.Atoi(num)
	if err != nil {
		return 0, e
	}
	if m := unknownField.FindStringSubmatch(msg); m != nil {
		out := fmt.Sprintf("unknown key %q", m[1])
		if near := closestKey(m[1], m[2]); near != "" {
			out += fmt.Sprintf(" (did you mean %q?)", near)
		}
		return line, out
	}
	if m := cannotUnmarshal.FindStringSubmatch(msg); m != nil {
		path := keyPathAt(root, line)
		got := map[string]string{"!!str": "a text value", "!!int": "a number", "!!bool": "true or false", "!!seq": "a list", "!!map": "a map", "!!float": "a number"}[m[1]]
		if got == "" {
			got = m[1]
		}
		if m[2] != "" {
			got += " " + m[2]
		}
		out := fmt.Sprintf("expected %s, got %s", shapeOf(m[3]), got)
		if path != "" {
			out = path + ": " + out
		}
		if m[1] == "!!seq" && path == "hosts" {
			out += "; for a plain list of hosts, put them in a file and set hosts_file: FILE"
		}
		return line, out
	}
	if path := keyPathAt(root, line); path != "" { // a value's own check ("-3s" is not a duration)
		return line, path + ": " + msg
	}
	return line, msg
}

var cannotUnmarshal = regexp.MustCompile("^cannot unmarshal (!!\\w+) ?(`[^`]*`)? into (\\S+)$")

// shapeOf says in words what a Go type of the config holds.
func shapeOf(goType string) string {
	switch goType {
	case "[]uint16":
		return "a list of ports (e.g. [443, 8443])"
	case "uint16":
		return "a port number (1-65535)"
	case "bool":
		return "true or false"
	case "int", "int64", "uint64":
		return "a whole number"
	case "float64":
		return "a number"
	case "string":
		return "a text value"
	case "[]string":
		return "a list of text values (e.g. [a, b])"
	case "map[string]*config.Host":
		return "a map of host entries (api.example.com: {profile: ...})"
	}
	switch {
	case strings.HasPrefix(goType, "[]"):
		return "a list"
	case strings.HasPrefix(goType, "map["), strings.HasPrefix(goType, "config."), strings.HasPrefix(goType, "*config."):
		return "a map of keys"
	}
	return goType
}

// keyPathAt is the key path of the value on line in the document root
// ("hosts.\"a.test\".ports"), the deepest key there, or "" if none is.
func keyPathAt(root *yaml.Node, line int) string {
	var best []string
	eachKey(root, func(path []string, _, k, v *yaml.Node) {
		if (k.Line == line || v.Line == line) && len(path) > len(best) {
			best = path
		}
	})
	if best == nil {
		return ""
	}
	return KeyPath(best...)
}

// eachKey calls fn for every key of every mapping in the document, parents
// before children, with the key's path (its own name last) and its mapping.
func eachKey(root *yaml.Node, fn func(path []string, mapping, k, v *yaml.Node)) {
	if root == nil {
		return
	}
	var walk func(n *yaml.Node, path []string)
	walk = func(n *yaml.Node, path []string) {
		switch n.Kind {
		case yaml.DocumentNode:
			for _, c := range n.Content {
				walk(c, path)
			}
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				p := append(slices.Clone(path), n.Content[i].Value)
				fn(p, n, n.Content[i], n.Content[i+1])
				walk(n.Content[i+1], p)
			}
		case yaml.SequenceNode:
			for i, c := range n.Content {
				walk(c, append(slices.Clone(path), strconv.Itoa(i)))
			}
		}
	}
	walk(root, nil)
}

// closestKey is the known key of the config type typeName ("config.Host")
// nearest to key, within two edits, or "".
func closestKey(key, typeName string) string { return Closest(key, configKeys()[typeName]) }

// Closest is the candidate nearest s (ignoring case), within two edits;
// "" when none is.
func Closest(s string, candidates []string) string {
	best, bestDist := "", 3
	for _, c := range candidates {
		if d := editDistance(strings.ToLower(s), strings.ToLower(c)); d < bestDist {
			best, bestDist = c, d
		}
	}
	return best
}

// configKeys maps each struct type of the config ("config.Host") to its
// YAML keys.
var configKeys = sync.OnceValue(func() map[string][]string {
	keys := map[string][]string{}
	var visit func(t reflect.Type)
	visit = func(t reflect.Type) {
		for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice || t.Kind() == reflect.Map {
			t = t.Elem()
		}
		if t.Kind() != reflect.Struct || keys[t.String()] != nil {
			return
		}
		keys[t.String()] = []string{}
		for f := range t.Fields() {
			name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if name == "" || name == "-" || !f.IsExported() {
				continue
			}
			keys[t.String()] = append(keys[t.String()], name)
			visit(f.Type)
		}
	}
	visit(reflect.TypeFor[Config]())
	return keys
})

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}

// duplicateKeys reports every key that a mapping of the document holds
// twice, in line order.
func duplicateKeys(name string, root *yaml.Node) []error {
	var errs []error
	first := map[*yaml.Node]map[string]int{} // by mapping: key -> its first line
	eachKey(root, func(path []string, m, k, _ *yaml.Node) {
		if first[m] == nil {
			first[m] = map[string]int{}
		}
		line, dup := first[m][k.Value]
		if !dup {
			first[m][k.Value] = k.Line
			return
		}
		where := ""
		if len(path) > 1 {
			where = KeyPath(path[:len(path)-1]...) + ": "
		}
		errs = append(errs, fmt.Errorf("%s:%d: %skey %q is already at line %d", name, k.Line, where, k.Value, line))
	})
	return errs
}
