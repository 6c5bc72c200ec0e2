package registry_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"time"

	"github.com/mvm-dev/microvm/internal/registry"
)

func Example() {
	tmp, err := os.MkdirTemp("", "registry-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(tmp)

	reg, err := registry.Open(filepath.Join(tmp, "state"))
	if err != nil {
		log.Fatal(err)
	}
	defer reg.Close()

	type VM struct {
		Name  string `json:"name"`
		VCPUs int    `json:"vcpus"`
	}
	if err := reg.Put("vm", "web-1", VM{Name: "web", VCPUs: 2}); err != nil {
		log.Fatal(err)
	}
	if err := reg.Put("vm", "db-1", VM{Name: "db", VCPUs: 4}); err != nil {
		log.Fatal(err)
	}

	var vm VM
	if err := reg.Get("vm", "web-1", &vm); err != nil {
		log.Fatal(err)
	}
	fmt.Println(vm.Name, vm.VCPUs)

	ids, err := reg.List("vm")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(ids)

	err = reg.Create("vm", "web-1", VM{})
	fmt.Println(errors.Is(err, registry.ErrExists))

	err = reg.Get("vm", "gone", &vm)
	fmt.Println(errors.Is(err, registry.ErrNotFound))
	// Output:
	// web 2
	// [db-1 web-1]
	// true
	// true
}

func ExampleRegistry_Lock() {
	tmp, err := os.MkdirTemp("", "registry-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(tmp)
	reg, err := registry.Open(tmp)
	if err != nil {
		log.Fatal(err)
	}
	defer reg.Close()

	// Serialise read-modify-write of one VM's records across processes.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	unlock, err := reg.Lock(ctx, "vm-web-1")
	if err != nil {
		log.Fatal(err)
	}
	defer unlock()

	var starts int
	if err := reg.Get("counter", "web-1", &starts); err != nil && !errors.Is(err, registry.ErrNotFound) {
		log.Fatal(err)
	}
	if err := reg.Put("counter", "web-1", starts+1); err != nil {
		log.Fatal(err)
	}
	fmt.Println("starts:", starts+1)
	// Output: starts: 1
}
