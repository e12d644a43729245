package config

import (
	"reflect"
	"strings"
)

// Every config field says what a reload does with it, in its `reload`
// tag: "live" (the reloaded value is in force for the next request, since
// it is compiled into the table a reload swaps in) or "restart" (it was
// used to build something that lives as long as the process: a listener,
// a store, a server, the logger). A field without the tag is a section
// whose own fields say; TestEveryFieldReloadClassified holds every field
// to it, so a new key cannot be forgotten.
const (
	reloadLive    = "live"
	reloadRestart = "restart"
)

// RestartOnly names, by key path, the restart-only settings in which next
// differs from running, the config the process was started with (what
// its listeners, stores and servers are built from): a reload swaps next
// in, but these keep running's values until sluice restarts.
func RestartOnly(running, next *Config) []string {
	var keys []string
	restartOnly(reflect.ValueOf(running).Elem(), reflect.ValueOf(next).Elem(), "", &keys)
	return keys
}

func restartOnly(a, b reflect.Value, prefix string, keys *[]string) {
	t := a.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		name := yamlName(f)
		if name == "" {
			continue
		}
		key := prefix + name
		switch f.Tag.Get("reload") {
		case reloadLive:
		case reloadRestart:
			if !reflect.DeepEqual(a.Field(i).Interface(), b.Field(i).Interface()) {
				*keys = append(*keys, key)
			}
		default:
			fa, fb := a.Field(i), b.Field(i)
			if fa.Kind() == reflect.Pointer {
				if fa.IsNil() || fb.IsNil() {
					if fa.IsNil() != fb.IsNil() { // a section added or taken away
						*keys = append(*keys, key)
					}
					continue
				}
				fa, fb = fa.Elem(), fb.Elem()
			}
			restartOnly(fa, fb, key+".", keys)
		}
	}
}

// yamlName is f's key in the file; "" for a field that is not in it.
func yamlName(f reflect.StructField) string {
	if !f.IsExported() {
		return ""
	}
	name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
	if name == "-" {
		return ""
	}
	return name
}
