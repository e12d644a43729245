package route

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// TestErrorsGolden checks that every problem of a bad file is reported at
// once, each with its key path and line, whether the config's structure
// or the compile step finds it. Run with -update to rewrite the golden files.
func TestErrorsGolden(t *testing.T) {
	files, _ := filepath.Glob("testdata/bad-*.yaml")
	if len(files) == 0 {
		t.Fatal("no testdata/bad-*.yaml")
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			_, err := Load(f, nil)
			if err == nil {
				t.Fatalf("Load(%s) succeeded, want errors", f)
			}
			got := []byte(err.Error() + "\n")
			golden := strings.TrimSuffix(f, ".yaml") + ".golden"
			if *update {
				os.WriteFile(golden, got, 0o644)
			}
			want, _ := os.ReadFile(golden)
			if !bytes.Equal(got, want) {
				t.Errorf("Load(%s) errors:\n%s\nwant:\n%s", f, got, want)
			}
		})
	}
}
