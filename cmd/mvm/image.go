package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/mvm-dev/microvm/image"
	"github.com/mvm-dev/microvm/image/oci"
	"github.com/mvm-dev/microvm/image/store"
)

// imagesStateDir is where, under the state directory, the image store
// keeps its images.
const imagesStateDir = "images"

func (g *globals) imageStore() (*store.Store, error) {
	if g.stateDir == "" {
		return nil, usagef("--state-dir must name a directory")
	}
	return store.Open(filepath.Join(g.stateDir, imagesStateDir))
}

// imageCmd is `mvm image`: build, list, inspect and remove root file system
// images in the state directory's image store.
func imageCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "image",
		Short: "Build, list, inspect and remove root file system images",
		Args:  exactArgs(0, ""),
		RunE:  func(cmd *cobra.Command, args []string) error { return cmd.Help() },
	}
	cmd.AddCommand(imageBuildCmd(g), imageLsCmd(g), imageInspectCmd(g), imageRmCmd(g))
	return cmd
}

func imageBuildCmd(g *globals) *cobra.Command {
	var (
		fromDir, fromTar, fromOCI string
		size, agentBin, platform  string
		withAgent                 bool
	)
	cmd := &cobra.Command{
		Use:   "build NAME --from-dir|--from-tar|--from-oci PATH [--size SIZE] [--agent]",
		Short: "Build an ext4 image from a directory, a tarball or a container image on disk (OCI layout or docker save)",
		Args:  exactArgs(1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if err := store.ValidateName(name); err != nil {
				return usagef("NAME: %w", err)
			}
			var kind, src string
			n := 0
			for _, f := range []struct{ kind, path string }{{"dir", fromDir}, {"tar", fromTar}, {"oci", fromOCI}} {
				if f.path != "" {
					kind, src = f.kind, f.path
					n++
				}
			}
			if n != 1 {
				return usagef("image build needs exactly one of --from-dir, --from-tar, --from-oci (got %d)", n)
			}
			abs, err := filepath.Abs(src)
			if err != nil {
				return usagef("--from-%s: %v", kind, err)
			}
			if _, err := os.Stat(abs); err != nil {
				return usagef("--from-%s: %v", kind, err)
			}
			if platform != "" && kind != "oci" {
				return usagef("--platform needs --from-oci")
			}
			opts := image.BuildOptions{}
			if size != "" {
				mib, err := parseSizeMiB("--size", size)
				if err != nil {
					return err
				}
				opts.SizeMiB = mib
			}
			builder := "mvm image build --from-" + kind
			if withAgent {
				bin, err := findAgent(agentBin)
				if err != nil {
					return err
				}
				opts.Agent = bin
				builder += " --agent"
			} else if agentBin != "" {
				return usagef("--agent-bin needs --agent")
			}
			st, err := g.imageStore()
			if err != nil {
				return err
			}
			source := store.Source{Kind: kind, Path: abs}
			img, err := st.Create(cmd.Context(), name, &source, builder, func(ctx context.Context, out string) error {
				switch kind {
				case "dir":
					return image.BuildFromDir(ctx, abs, out, opts)
				case "tar":
					return image.BuildFromTar(ctx, abs, out, opts)
				}
				info, err := oci.Build(ctx, abs, out, oci.Options{Platform: platform}, opts)
				if err == nil {
					source.Digest = info.Digest
				}
				return err
			})
			if err != nil {
				return err
			}
			return g.printImages([]store.Image{img})
		},
	}
	f := cmd.Flags()
	f.StringVar(&fromDir, "from-dir", "", "build from the tree of this directory")
	f.StringVar(&fromTar, "from-tar", "", "build from this tar archive (plain or gzip)")
	f.StringVar(&fromOCI, "from-oci", "", "build from the OCI image layout directory or 'docker save' archive at `PATH`")
	f.StringVar(&platform, "platform", "", "with --from-oci: os/arch of the image to pick (default linux and this host's)")
	f.StringVar(&size, "size", "", "file system size with a K, M or G suffix (default: the content plus headroom)")
	f.BoolVar(&withAgent, "agent", false, "install mvm-agent as /sbin/init so the image boots with the agent")
	f.StringVar(&agentBin, "agent-bin", os.Getenv("MVM_AGENT_BIN"), "static mvm-agent binary for --agent (env MVM_AGENT_BIN; default: mvm-agent beside mvm or on PATH)")
	return cmd
}

// findAgent returns the mvm-agent binary: explicit, else beside this
// program, else on PATH.
func findAgent(explicit string) (string, error) {
	if explicit != "" {
		if _, err := os.Stat(explicit); err != nil {
			return "", usagef("--agent-bin: %v", err)
		}
		return explicit, nil
	}
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), "mvm-agent")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	if p, err := exec.LookPath("mvm-agent"); err == nil {
		return p, nil
	}
	return "", usagef("--agent: no mvm-agent found beside mvm or on PATH; build it with 'CGO_ENABLED=0 go build ./cmd/mvm-agent' and pass --agent-bin")
}

// cutSizeSuffix splits s into its number and the multiplier of its
// optional K, M or G suffix (powers of 1024; no suffix: 1).
func cutSizeSuffix(s string) (num string, mult int64) {
	if n := len(s); n > 0 {
		switch s[n-1] {
		case 'k', 'K':
			return s[:n-1], 1 << 10
		case 'm', 'M':
			return s[:n-1], 1 << 20
		case 'g', 'G':
			return s[:n-1], 1 << 30
		}
	}
	return s, 1
}

// parseSizeMiB parses a size with an optional K, M or G suffix (powers of
// 1024; no suffix: bytes) into whole MiB.
func parseSizeMiB(flag, s string) (int, error) {
	num, mult := cutSizeSuffix(s)
	v, err := strconv.ParseInt(num, 10, 64)
	if err != nil || v <= 0 || v > (int64(image.MaxSizeMiB)<<20)/mult || (v*mult)%(1<<20) != 0 {
		return 0, usagef("%s: size must be a whole number of MiB > 0 with an optional K, M or G suffix, at most %dG (got %q)", flag, image.MaxSizeMiB>>10, s)
	}
	return int(v * mult >> 20), nil
}

func imageLsCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "ls",
		Short: "List images",
		Args:  exactArgs(0, ""),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := g.imageStore()
			if err != nil {
				return err
			}
			imgs, err := st.List()
			if perr := g.printImages(imgs); perr != nil {
				return perr
			}
			return err
		},
	}
}

// imageView is what `image inspect` prints: the manifest, the path and
// the users.
type imageView struct {
	store.Image
	Users []string `json:"users"`
}

func imageInspectCmd(g *globals) *cobra.Command {
	var verify bool
	cmd := &cobra.Command{
		Use:   "inspect NAME",
		Short: "Show an image's manifest, path and users (JSON)",
		Args:  exactArgs(1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := g.imageStore()
			if err != nil {
				return err
			}
			img, err := st.Get(args[0])
			if err != nil {
				return err
			}
			users, err := st.Users(args[0])
			if err != nil {
				return err
			}
			if verify {
				if err := st.Verify(cmd.Context(), args[0]); err != nil {
					return err
				}
			}
			if users == nil {
				users = []string{}
			}
			return writeJSON(g.stdout, imageView{Image: img, Users: users})
		},
	}
	cmd.Flags().BoolVar(&verify, "verify", false, "re-hash the image and fail unless it matches its manifest")
	return cmd
}

func imageRmCmd(g *globals) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "rm NAME...",
		Short: "Remove images (refused while a VM uses one, unless --force)",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usagef("image rm needs NAME (got 0 arguments)")
			}
			return nonEmptyArgs(cmd, args, "NAME")
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := g.imageStore()
			if err != nil {
				return err
			}
			var errs []error
			for _, name := range args {
				if err := st.Remove(name, force); err != nil {
					errs = append(errs, err)
				}
			}
			return errors.Join(errs...)
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "remove even while VMs use it (their clones are not affected)")
	return cmd
}

func (g *globals) printImages(imgs []store.Image) error {
	if g.output == "json" {
		if imgs == nil {
			imgs = []store.Image{}
		}
		return writeJSON(g.stdout, imgs)
	}
	tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSIZE\tSOURCE\tSHA256\tCREATED")
	for _, i := range imgs {
		src := i.Source.Kind + ":" + i.Source.Path
		fmt.Fprintf(tw, "%s\t%d MiB\t%s\t%s\t%s\n", i.Name, i.SizeBytes>>20, src, shortSum(i.SHA256), i.Created.Local().Format(time.DateTime))
	}
	return tw.Flush()
}

func shortSum(s string) string {
	if len(s) > 12 {
		return s[:12]
	}
	return s
}
