// Package oci builds ext4 root file systems from container images on disk:
// an OCI image layout directory or a `docker save` archive. It reads them
// with github.com/google/go-containerregistry (kept out of the rest of
// mvm's import graph) and applies the layers with package image
// ([image.BuildFromLayers]): in order, whiteouts honoured, modes,
// ownership, symbolic and hard links and xattrs kept, hostile entries
// refused. Pulling from a registry is not done here. It is for programs
// that turn container images into guest images (`mvm image build
// --from-oci` is one).
package oci

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/mvm-dev/microvm/image"
)

// ErrNoImage: the source holds no image for the platform, or several and
// none was chosen.
var ErrNoImage = errors.New("oci: no matching image")

// Options choose the image in a source with several.
type Options struct {
	// Platform is "os/arch[/variant]"; "" means linux and this host's
	// architecture.
	Platform string
	// Tag picks an image of a `docker save` archive holding several
	// (e.g. "alpine:3.19"); "" requires exactly one.
	Tag string
}

// Info describes the image a build used.
type Info struct {
	// Kind is "oci-layout" or "docker-archive".
	Kind string
	// Digest is the image manifest's digest.
	Digest string
	// Layers is the number of layers applied.
	Layers int
}

// Open finds the image at src (an OCI layout directory, or a file made by
// `docker save`) and returns it with its kind.
func Open(src string, opts Options) (v1.Image, string, error) {
	fi, err := os.Stat(src)
	if err != nil {
		return nil, "", fmt.Errorf("oci: %w", err)
	}
	if fi.IsDir() {
		img, err := fromLayout(src, opts)
		return img, "oci-layout", err
	}
	var tag *name.Tag
	if opts.Tag != "" {
		t, err := name.NewTag(opts.Tag)
		if err != nil {
			return nil, "", fmt.Errorf("oci: tag %q: %w", opts.Tag, err)
		}
		tag = &t
	}
	img, err := tarball.ImageFromPath(src, tag)
	if err != nil {
		return nil, "", fmt.Errorf("oci: %s is not a readable docker-save archive: %w: %w", src, image.ErrBadArchive, err)
	}
	return img, "docker-archive", nil
}

func platform(opts Options) (v1.Platform, error) {
	if opts.Platform == "" {
		return v1.Platform{OS: "linux", Architecture: runtime.GOARCH}, nil
	}
	p, err := v1.ParsePlatform(opts.Platform)
	if err != nil {
		return v1.Platform{}, fmt.Errorf("oci: platform %q: %w", opts.Platform, err)
	}
	return *p, nil
}

func fromLayout(dir string, opts Options) (v1.Image, error) {
	if _, err := os.Stat(filepath.Join(dir, "oci-layout")); err != nil {
		return nil, fmt.Errorf("oci: %s is not an OCI image layout (no oci-layout file): %w", dir, image.ErrBadArchive)
	}
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		return nil, fmt.Errorf("oci: %s: %w: %w", dir, image.ErrBadArchive, err)
	}
	want, err := platform(opts)
	if err != nil {
		return nil, err
	}
	return pick(idx, want, 0)
}

// pick returns the image of idx for platform want: the only one, or the
// one whose platform matches (descending into nested indexes).
func pick(idx v1.ImageIndex, want v1.Platform, depth int) (v1.Image, error) {
	if depth > 4 {
		return nil, fmt.Errorf("oci: image indexes nested too deep: %w", image.ErrBadArchive)
	}
	m, err := idx.IndexManifest()
	if err != nil {
		return nil, fmt.Errorf("oci: index: %w: %w", image.ErrBadArchive, err)
	}
	var cands []v1.Descriptor
	for _, d := range m.Manifests {
		if d.Platform == nil || d.Platform.Satisfies(want) {
			cands = append(cands, d)
		}
	}
	if len(cands) == 0 {
		return nil, fmt.Errorf("oci: no image for %s among %d: %w", want.String(), len(m.Manifests), ErrNoImage)
	}
	var errs []error
	for _, d := range cands {
		if d.MediaType.IsIndex() {
			child, err := idx.ImageIndex(d.Digest)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			img, err := pick(child, want, depth+1)
			if err == nil {
				return img, nil
			}
			errs = append(errs, err)
			continue
		}
		if !d.MediaType.IsImage() {
			continue
		}
		if d.Platform == nil && len(cands) > 1 {
			// Without platforms, only a single image is unambiguous.
			return nil, fmt.Errorf("oci: %d images without platforms: %w", len(cands), ErrNoImage)
		}
		img, err := idx.Image(d.Digest)
		if err != nil {
			return nil, fmt.Errorf("oci: image %s: %w: %w", d.Digest, image.ErrBadArchive, err)
		}
		return img, nil
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return nil, fmt.Errorf("oci: no image for %s: %w", want.String(), ErrNoImage)
}

// Build writes an ext4 image of the container image at src to out
// atomically (see [image.BuildFromLayers]). Each layer's uncompressed
// content is checked against the diff_id in the image's configuration; a
// missing or corrupt layer fails with [image.ErrBadArchive] and leaves
// nothing at out.
func Build(ctx context.Context, src, out string, opts Options, bopts image.BuildOptions) (Info, error) {
	img, kind, err := Open(src, opts)
	if err != nil {
		return Info{}, err
	}
	dig, err := img.Digest()
	if err != nil {
		return Info{}, fmt.Errorf("oci: %s: manifest: %w: %w", src, image.ErrBadArchive, err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return Info{}, fmt.Errorf("oci: %s: config: %w: %w", src, image.ErrBadArchive, err)
	}
	ls, err := img.Layers()
	if err != nil {
		return Info{}, fmt.Errorf("oci: %s: layers: %w: %w", src, image.ErrBadArchive, err)
	}
	if len(ls) != len(cfg.RootFS.DiffIDs) {
		return Info{}, fmt.Errorf("oci: %s: %d layers but %d diff_ids in the config: %w", src, len(ls), len(cfg.RootFS.DiffIDs), image.ErrBadArchive)
	}
	layers := make([]image.Layer, len(ls))
	for i, l := range ls {
		want := cfg.RootFS.DiffIDs[i]
		layers[i] = image.Layer{Name: want.String(), Open: func() (io.ReadCloser, error) {
			rc, err := l.Uncompressed()
			if err != nil {
				return nil, err
			}
			return &verifier{r: rc, h: sha256.New(), want: want}, nil
		}}
	}
	if err := image.BuildFromLayers(ctx, layers, out, bopts); err != nil {
		return Info{}, err
	}
	return Info{Kind: kind, Digest: dig.String(), Layers: len(ls)}, nil
}

// verifier hashes what is read; Close reads the rest and fails unless the
// stream's sha256 is the expected diff_id.
type verifier struct {
	r    io.ReadCloser
	h    hash.Hash
	want v1.Hash
	done bool
	err  error
}

func (v *verifier) Read(p []byte) (int, error) {
	if v.err != nil {
		return 0, v.err
	}
	n, err := v.r.Read(p)
	v.h.Write(p[:n])
	if err == io.EOF {
		if cerr := v.check(); cerr != nil {
			v.err = cerr // sticky: a reader above may drop an error once
			return n, cerr
		}
	}
	return n, err
}

func (v *verifier) check() error {
	if v.done {
		return nil
	}
	v.done = true
	if v.want.Algorithm != "sha256" {
		return fmt.Errorf("diff_id %s: unsupported algorithm: %w", v.want, image.ErrBadArchive)
	}
	if got := hex.EncodeToString(v.h.Sum(nil)); !strings.EqualFold(got, v.want.Hex) {
		return fmt.Errorf("layer content sha256:%s does not match diff_id %s: %w", got, v.want, image.ErrBadArchive)
	}
	return nil
}

// Close fails when the stream was read to its end and did not match.
func (v *verifier) Close() error {
	err := v.r.Close()
	if v.err != nil {
		return v.err
	}
	return err
}
