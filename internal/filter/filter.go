// Package filter checks requests against named rule sets before anything
// is forwarded, and bans clients that keep breaking them. A violation is
// answered at once with 4xx and
// {"error":"rule_violation","rule":NAME,"detail":...}; a banned client is
// refused before its request body is read.
//
// Config keys: rule_sets.NAME (methods, allow_paths, deny_paths,
// max_body_bytes, max_header_bytes, max_headers, json_max_depth,
// require_headers, forbid_headers, deny_query, deny_json, ban); per host:
// rules (a rule set's name, or off; default: the profile's).
//
// Metrics: sluice_filter_violations_total{rule_set,check},
// sluice_filter_bans_total, sluice_filter_banned_requests_total.
package filter

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"sluice/internal/bodymem"
	"sluice/internal/config"
)

// Rules is one compiled rule set. It is immutable.
type Rules struct {
	Name      string
	methods   []string
	allow     []pathMatch
	deny      []pathMatch
	maxBody   int64
	maxHeader int64
	maxCount  int
	jsonDepth int
	require   []string
	forbid    []string
	query     []queryDeny
	denyJSON  []jsonDeny
	jsonRoot  []string
	limits    []jsonLimit
	Ban       *config.BanPolicy
	// EOSIOAnswer: violations are answered as the EOSIO node filter sluice
	// replaces answers them (answer: eosio), not with sluice's JSON error.
	EOSIOAnswer bool
}

type jsonLimit struct {
	path               []string
	maxItems, maxBytes int
}

type pathMatch struct {
	exact, prefix string
	re            *regexp.Regexp
	methods       []string
	fold          bool // compare ignoring case (deny rules)
}

func (p pathMatch) match(method, path string) bool {
	if len(p.methods) > 0 && !slices.Contains(p.methods, method) {
		return false
	}
	switch {
	case p.re != nil:
		return p.re.MatchString(path)
	case p.prefix != "" && p.fold:
		return len(path) >= len(p.prefix) && strings.EqualFold(path[:len(p.prefix)], p.prefix)
	case p.prefix != "":
		return strings.HasPrefix(path, p.prefix)
	case p.fold:
		return strings.EqualFold(path, p.exact) || len(path) == len(p.exact)+1 && path[len(path)-1] == '/' && strings.EqualFold(path[:len(p.exact)], p.exact)
	}
	return path == p.exact
}

type queryDeny struct {
	param string
	re    *regexp.Regexp
}

type jsonDeny struct {
	path   []string // "actions[].account" -> ["actions", "[]", "account"]
	values []string
	packed [][8]byte // eosio_packed: the values as EOSIO names, little-endian
}

// Compile builds the rule set rs (validated by config) named name.
func Compile(name string, rs *config.RuleSet) (*Rules, error) {
	if rs == nil {
		return nil, nil
	}
	r := &Rules{Name: name, methods: rs.Methods, maxBody: int64(rs.MaxBodyBytes), maxHeader: int64(rs.MaxHeaderBytes),
		maxCount: rs.MaxHeaders, jsonDepth: rs.JSONMaxDepth, Ban: rs.Ban, jsonRoot: rs.JSONRoot, EOSIOAnswer: rs.Answer == "eosio"}
	for _, l := range rs.JSONLimits {
		r.limits = append(r.limits, jsonLimit{path: splitJSONPath(l.Path), maxItems: l.MaxItems, maxBytes: l.MaxLength})
	}
	for _, h := range rs.RequireHeaders {
		r.require = append(r.require, http.CanonicalHeaderKey(h))
	}
	for _, h := range rs.ForbidHeaders {
		r.forbid = append(r.forbid, http.CanonicalHeaderKey(h))
	}
	var errs []error
	var err error
	if r.allow, err = compilePaths(rs.AllowPaths, false); err != nil {
		errs = append(errs, config.Under(err, "allow_paths"))
	}
	if r.deny, err = compilePaths(rs.DenyPaths, true); err != nil {
		errs = append(errs, config.Under(err, "deny_paths"))
	}
	for i, q := range rs.DenyQuery {
		re, err := regexp.Compile(q.Pattern)
		if err != nil {
			errs = append(errs, config.Under(err, "deny_query", strconv.Itoa(i), "pattern"))
			continue
		}
		r.query = append(r.query, queryDeny{param: q.Param, re: re})
	}
	for i, j := range rs.DenyJSON {
		d := jsonDeny{path: splitJSONPath(j.Path), values: j.Values}
		if j.EOSIOPacked {
			for _, v := range j.Values {
				n, err := eosioName(v)
				if err != nil {
					errs = append(errs, config.Under(err, "deny_json", strconv.Itoa(i), "values"))
					continue
				}
				var b [8]byte
				binary.LittleEndian.PutUint64(b[:], n)
				d.packed = append(d.packed, b)
			}
		}
		r.denyJSON = append(r.denyJSON, d)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return r, nil
}

// compilePaths compiles path rules. Deny rules fold case (and an exact one
// ignores a trailing slash): an upstream that reads /SAPI/ as /sapi/ must
// not serve what the rule refuses. Allow rules do not: an unusual spelling
// is refused, never let through.
func compilePaths(ps []config.PathMatch, fold bool) ([]pathMatch, error) {
	var out []pathMatch
	for i, p := range ps {
		pm := pathMatch{exact: p.Exact, prefix: p.Prefix, methods: p.Methods, fold: fold}
		if p.Regex != "" {
			compile := regexp.Compile
			if fold {
				compile = config.FoldRegexp
			}
			re, err := compile(p.Regex)
			if err != nil {
				return nil, config.Under(err, strconv.Itoa(i), "regex")
			}
			pm.re = re
		}
		out = append(out, pm)
	}
	return out, nil
}

// splitJSONPath turns "actions[].account" into ["actions", "[]", "account"].
func splitJSONPath(p string) []string {
	var out []string
	for part := range strings.SplitSeq(p, ".") {
		name, arrays, _ := strings.Cut(part, "[]")
		if name != "" {
			out = append(out, name)
		}
		if arrays != "" || strings.HasSuffix(part, "[]") {
			out = append(out, "[]")
			for range strings.Count(arrays, "[]") {
				out = append(out, "[]")
			}
		}
	}
	return out
}

// The checks a violation names (its Check, the metrics' check label).
const (
	CheckMethod           = "method"
	CheckPath             = "path"
	CheckHeaderCount      = "header_count"
	CheckHeaderBytes      = "header_bytes"
	CheckRequiredHeader   = "required_header"
	CheckForbiddenHeader  = "forbidden_header"
	CheckQuery            = "query"
	CheckBodyBytes        = "body_bytes"
	CheckJSON             = "json"
	CheckJSONDuplicateKey = "json_duplicate_key"
	CheckJSONDepth        = "json_depth"
	CheckJSONRoot         = "json_root"
	CheckJSONValue        = "json_value"
	CheckJSONLimit        = "json_limit"
)

// Checks returns the checks this rule set can report a violation of, so
// that their series exist before the first one.
func (r *Rules) Checks() []string {
	var out []string
	add := func(on bool, checks ...string) {
		if on {
			out = append(out, checks...)
		}
	}
	add(len(r.methods) > 0, CheckMethod)
	add(len(r.allow) > 0 || len(r.deny) > 0, CheckPath)
	add(r.maxCount > 0, CheckHeaderCount)
	add(r.maxHeader > 0, CheckHeaderBytes)
	add(len(r.require) > 0, CheckRequiredHeader)
	add(len(r.forbid) > 0, CheckForbiddenHeader)
	add(len(r.query) > 0, CheckQuery)
	add(r.maxBody > 0 || r.hasJSONRules(), CheckBodyBytes)
	add(r.hasJSONRules(), CheckJSON, CheckJSONDuplicateKey)
	add(r.jsonDepth > 0, CheckJSONDepth)
	add(len(r.jsonRoot) > 0, CheckJSONRoot)
	add(len(r.denyJSON) > 0, CheckJSONValue)
	add(len(r.limits) > 0, CheckJSONLimit)
	return out
}

// Violation is a broken rule: Status is the answer's, Check names the
// check for metrics and logs.
type Violation struct {
	Status int
	Check  string
	Detail string
}

func (v *Violation) Error() string { return v.Check + ": " + v.Detail }

func violation(status int, check, format string, args ...any) *Violation {
	return &Violation{Status: status, Check: check, Detail: fmt.Sprintf(format, args...)}
}

// CheckHead checks what is known before the body is read.
func (r *Rules) CheckHead(req *http.Request) *Violation {
	if len(r.methods) > 0 && !slices.Contains(r.methods, req.Method) {
		return violation(http.StatusMethodNotAllowed, CheckMethod, "method %s is not allowed (allowed: %s)", req.Method, strings.Join(r.methods, ", "))
	}
	path := req.URL.Path
	if len(r.allow) > 0 && !slices.ContainsFunc(r.allow, func(p pathMatch) bool { return p.match(req.Method, path) }) {
		return violation(http.StatusForbidden, CheckPath, "path %s is not in the allowed paths", path)
	}
	if slices.ContainsFunc(r.deny, func(p pathMatch) bool { return p.match(req.Method, path) }) {
		return violation(http.StatusForbidden, CheckPath, "%s %s is denied", req.Method, path)
	}
	if r.maxCount > 0 || r.maxHeader > 0 {
		n, size := 0, int64(0)
		for k, vs := range req.Header {
			for _, v := range vs {
				n++
				size += int64(len(k) + len(v) + 4)
			}
		}
		if r.maxCount > 0 && n > r.maxCount {
			return violation(http.StatusRequestHeaderFieldsTooLarge, CheckHeaderCount, "%d header fields, at most %d", n, r.maxCount)
		}
		if r.maxHeader > 0 && size > r.maxHeader {
			return violation(http.StatusRequestHeaderFieldsTooLarge, CheckHeaderBytes, "%d bytes of header fields, at most %d", size, r.maxHeader)
		}
	}
	for _, h := range r.require {
		if req.Header.Get(h) == "" {
			return violation(http.StatusBadRequest, CheckRequiredHeader, "header %s is required", h)
		}
	}
	for _, h := range r.forbid {
		if _, ok := req.Header[h]; ok {
			return violation(http.StatusBadRequest, CheckForbiddenHeader, "header %s is not allowed", h)
		}
	}
	if len(r.query) > 0 {
		q := req.URL.Query()
		for _, d := range r.query {
			for _, v := range q[d.param] {
				if d.re.MatchString(v) {
					return violation(http.StatusBadRequest, CheckQuery, "query parameter %s=%q is denied", d.param, v)
				}
			}
		}
	}
	if r.maxBody > 0 && req.ContentLength > r.maxBody {
		return violation(http.StatusRequestEntityTooLarge, CheckBodyBytes, "body of %d bytes, at most %d", req.ContentLength, r.maxBody)
	}
	return nil
}

// needsBody reports whether the body must be read whole before forwarding
// (JSON checks); otherwise only its size is watched as it streams.
func (r *Rules) needsBody(*http.Request) bool { return r.hasJSONRules() }

// hasJSONRules reports whether the rule set checks JSON bodies. It then
// reads every body, whatever it is labelled: a client must not skip the
// checks by changing its Content-Type.
func (r *Rules) hasJSONRules() bool {
	return r.jsonDepth > 0 || len(r.denyJSON) > 0 || len(r.jsonRoot) > 0 || len(r.limits) > 0
}

// looksJSON reports whether a body is to be read as JSON: it says so, or
// it starts like a JSON object or array, as a lenient upstream would take it.
func looksJSON(contentType string, body []byte) bool {
	if isJSON(contentType) {
		return true
	}
	b := bytes.TrimLeft(body, " \t\r\n")
	return len(b) > 0 && (b[0] == '{' || b[0] == '[')
}

func isJSON(ct string) bool {
	ct, _, _ = strings.Cut(ct, ";")
	ct = strings.TrimSpace(strings.ToLower(ct))
	return ct == "application/json" || strings.HasSuffix(ct, "+json")
}

// errTooLarge marks a body cut off at max_body_bytes.
var errTooLarge = errors.New("request body larger than max_body_bytes")

// CheckBody reads a JSON body (bounded by max_body_bytes, or 1 MiB, and
// by the memory all bodies read whole may hold: bodymem.ErrFull) and
// checks it, returning it for forwarding; other bodies are wrapped so that
// they are cut off past max_body_bytes as they stream.
func (r *Rules) CheckBody(req *http.Request) (*Violation, error) {
	if req.Body == nil || req.Body == http.NoBody {
		return nil, nil
	}
	if !r.needsBody(req) {
		if r.maxBody > 0 {
			req.Body = &limitedBody{ReadCloser: req.Body, left: r.maxBody, err: errTooLarge}
		}
		return nil, nil
	}
	limit := r.maxBody
	if limit <= 0 {
		limit = 1 << 20
	}
	body, whole, err := bodymem.ReadAll(req.Context(), req.Body, req.ContentLength, limit)
	req.Body.Close()
	if err != nil {
		return nil, err // bodymem.ErrFull among them: the middleware answers 503
	}
	if !whole {
		return violation(http.StatusRequestEntityTooLarge, CheckBodyBytes, "body larger than %d bytes", limit), nil
	}
	req.Body = io.NopCloser(bytes.NewReader(body))
	req.ContentLength = int64(len(body))
	if !looksJSON(req.Header.Get("Content-Type"), body) && len(r.jsonRoot) == 0 {
		return nil, nil // not JSON, and JSON is not required: the JSON rules have nothing to check
	}
	return r.checkJSON(body), nil
}

func (r *Rules) checkJSON(body []byte) *Violation {
	d, dup, err := scanJSON(body)
	switch {
	case err != nil:
		return violation(http.StatusBadRequest, CheckJSON, "body is not valid JSON: %v", err)
	case dup != "":
		// Parsers disagree about which of two values wins: the rules
		// might check one and the upstream act on the other.
		return violation(http.StatusBadRequest, CheckJSONDuplicateKey, "key %q appears twice in one object", dup)
	case r.jsonDepth > 0 && d > r.jsonDepth:
		return violation(http.StatusBadRequest, CheckJSONDepth, "JSON nested %d deep, at most %d", d, r.jsonDepth)
	}
	if len(r.denyJSON) == 0 && len(r.jsonRoot) == 0 && len(r.limits) == 0 {
		return nil
	}
	var doc any
	if err := json.Unmarshal(body, &doc); err != nil {
		return violation(http.StatusBadRequest, CheckJSON, "body is not valid JSON: %v", err)
	}
	if len(r.jsonRoot) > 0 {
		root := "scalar"
		switch doc.(type) {
		case map[string]any:
			root = "object"
		case []any:
			root = "array"
		}
		if !slices.Contains(r.jsonRoot, root) {
			return violation(http.StatusBadRequest, CheckJSONRoot, "the body is a JSON %s, want %s", root, strings.Join(r.jsonRoot, " or "))
		}
	}
	for _, l := range r.limits {
		if v := checkLimit(doc, l.path, l); v != nil {
			return v
		}
	}
	for _, d := range r.denyJSON {
		if len(d.packed) > 0 {
			if v, ok := findPacked(doc, d); ok {
				return violation(http.StatusForbidden, CheckJSONValue, "%s names %q", strings.Join(d.path, "."), v)
			}
			continue
		}
		if v, ok := findValue(doc, d.path, d.values); ok {
			return violation(http.StatusForbidden, CheckJSONValue, "%s %q is denied", strings.Join(d.path, "."), v)
		}
	}
	return nil
}

// each calls fn on every value at path in doc ("[]" visits every element,
// and a top-level list of documents is walked too).
func each(doc any, path []string, fn func(any) bool) bool {
	if len(path) == 0 {
		return fn(doc)
	}
	switch v := doc.(type) {
	case []any:
		rest := path
		if path[0] == "[]" {
			rest = path[1:]
		}
		for _, e := range v {
			if each(e, rest, fn) {
				return true
			}
		}
	case map[string]any:
		if path[0] == "[]" {
			return false
		}
		if child, ok := v[path[0]]; ok {
			return each(child, path[1:], fn)
		}
		for k, child := range v { // key names match ignoring case, as lenient parsers read them
			if strings.EqualFold(k, path[0]) {
				return each(child, path[1:], fn)
			}
		}
	}
	return false
}

func checkLimit(doc any, path []string, l jsonLimit) *Violation {
	var v *Violation
	where := strings.Join(path, ".")
	if where == "" {
		where = "the body"
	}
	check := func(x any) bool {
		switch x := x.(type) {
		case []any:
			if l.maxItems > 0 && len(x) > l.maxItems {
				v = violation(http.StatusBadRequest, CheckJSONLimit, "%s holds %d items, at most %d", where, len(x), l.maxItems)
			}
		case string:
			if l.maxBytes > 0 && len(x) > l.maxBytes {
				v = violation(http.StatusBadRequest, CheckJSONLimit, "%s is %d bytes, at most %d", where, len(x), l.maxBytes)
			}
		}
		return v != nil
	}
	if len(path) == 0 {
		check(doc) // the document itself: a list of transactions
		return v
	}
	each(doc, path, check)
	return v
}

// findPacked reports a denied name found in a hex-encoded packed
// transaction at d.path.
func findPacked(doc any, d jsonDeny) (string, bool) {
	var found string
	each(doc, d.path, func(x any) bool {
		s, ok := x.(string)
		if !ok {
			return false
		}
		raw, err := hex.DecodeString(s)
		if err != nil {
			found = "(not hex)"
			return true
		}
		for i, name := range d.packed {
			if bytes.Contains(raw, name[:]) {
				found = d.values[i]
				return true
			}
		}
		return false
	})
	return found, found != ""
}

// eosioName encodes an EOSIO account name ("eosio.token") as its 64-bit
// value: 5 bits per character ('.'=0, '1'-'5', 'a'-'z'), 12 characters
// high bits first, a 13th in the low 4 bits.
func eosioName(s string) (uint64, error) {
	if len(s) > 13 {
		return 0, fmt.Errorf("EOSIO name %q is longer than 13 characters", s)
	}
	var n uint64
	for i := 0; i < len(s); i++ {
		var c uint64
		switch ch := s[i]; {
		case ch == '.':
		case ch >= '1' && ch <= '5':
			c = uint64(ch-'1') + 1
		case ch >= 'a' && ch <= 'z':
			c = uint64(ch-'a') + 6
		default:
			return 0, fmt.Errorf("EOSIO name %q: character %q", s, ch)
		}
		if i < 12 {
			n |= (c & 0x1f) << (64 - 5*(i+1))
		} else {
			n |= c & 0x0f
		}
	}
	return n, nil
}

// scanJSON reads a JSON document as tokens (no tree is built, so a deep
// document cannot exhaust memory or stack) and returns how deep it nests
// and the first key that appears twice in one object, ignoring case.
func scanJSON(body []byte) (depth int, dup string, err error) {
	type frame struct {
		object, wantKey bool
		keys            map[string]bool
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	var stack []*frame
	value := func() { // a value ended: in an object, a key comes next
		if n := len(stack); n > 0 && stack[n-1].object {
			stack[n-1].wantKey = true
		}
	}
	for {
		t, err := dec.Token()
		if err == io.EOF {
			if len(stack) != 0 {
				return 0, "", io.ErrUnexpectedEOF
			}
			return depth, dup, nil
		}
		if err != nil {
			return 0, "", err
		}
		switch t {
		case json.Delim('{'), json.Delim('['):
			if n := len(stack); n > 0 && stack[n-1].object {
				stack[n-1].wantKey = false
			}
			stack = append(stack, &frame{object: t == json.Delim('{'), wantKey: true, keys: map[string]bool{}})
			depth = max(depth, len(stack))
		case json.Delim('}'), json.Delim(']'):
			stack = stack[:len(stack)-1]
			value()
		default:
			if n := len(stack); n > 0 && stack[n-1].object && stack[n-1].wantKey {
				k := strings.ToLower(t.(string))
				if stack[n-1].keys[k] && dup == "" {
					dup = t.(string)
				}
				stack[n-1].keys[k] = true
				stack[n-1].wantKey = false
				continue
			}
			value()
		}
	}
}

// findValue reports a string at path in doc that is one of values.
func findValue(doc any, path []string, values []string) (string, bool) {
	var found string
	each(doc, path, func(x any) bool {
		if s, ok := x.(string); ok && slices.Contains(values, s) {
			found = s
			return true
		}
		return false
	})
	return found, found != ""
}

// limitedBody fails a read past the limit with err, which aborts the
// forwarded request.
type limitedBody struct {
	io.ReadCloser
	left int64
	err  error
}

func (b *limitedBody) Read(p []byte) (int, error) {
	if b.left < 0 {
		return 0, b.err
	}
	if int64(len(p)) > b.left+1 {
		p = p[:b.left+1]
	}
	n, err := b.ReadCloser.Read(p)
	b.left -= int64(n)
	if b.left < 0 {
		return 0, b.err
	}
	return n, err
}
