package server

import (
	"os"
	"runtime/pprof"
	"sync"
)

// startupProfile starts a CPU profile written to path (the undocumented
// FCSTANDIN_CPUPROFILE, for tuning start-up) and returns the function that
// ends it. Profiles of many starts can be merged with
// `go tool pprof -proto a b c > merged`. Problems are ignored: this is a
// development aid only.
func startupProfile(path string) (stop func()) {
	if path == "" {
		return func() {}
	}
	f, err := os.Create(path)
	if err != nil {
		return func() {}
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return func() {}
	}
	return sync.OnceFunc(func() {
		pprof.StopCPUProfile()
		f.Close()
	})
}
