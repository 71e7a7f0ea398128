package bootassets

import (
	"os"
	"path/filepath"
	"strings"
)

// removeStaleTemps deletes leftovers of interrupted builds (names starting
// with ".tmp-") in dir. Call it only while holding dir's lock.
func removeStaleTemps(dir string) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".tmp-") {
			os.RemoveAll(filepath.Join(dir, e.Name()))
		}
	}
}
