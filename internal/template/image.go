package template

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"golang.org/x/sys/unix"

	"github.com/sbx-dev/sbx/internal/safefile"
)

// Platform is the only platform sandboxes run: images are pulled and
// picked from multi-platform indexes for it.
var Platform = v1.Platform{OS: "linux", Architecture: "amd64"}

var (
	// ErrBuiltinName is returned when an image or a saved sandbox would
	// take the name of a built-in template.
	ErrBuiltinName = errors.New("the name belongs to a built-in template")
	// ErrUnknownFormat is returned for a file that is none of the formats
	// LoadFile reads.
	ErrUnknownFormat = errors.New("not a docker save tarball, OCI image layout or archive, or sbx template file")
)

// ImportOptions say how an image or a file becomes a template.
type ImportOptions struct {
	// Name is the template's name; empty means one derived from the
	// image's tag or the file's name (see NameFor).
	Name string
	// Progress receives progress lines; nil discards them.
	Progress io.Writer
	// InUse reports whether a sandbox disk is backed by an image id. When
	// an import replaces a template of the same name, the old image is
	// deleted only if InUse says false and no other template names it;
	// nil keeps it.
	InUse func(id string) bool
	// Replace, when set, is asked before a template of the same name is
	// replaced; an error stops the import before any work. Nil replaces
	// any template that is not built in.
	Replace func(old Template) error
}

func (o *ImportOptions) progress() io.Writer {
	if o.Progress == nil {
		return io.Discard
	}
	return o.Progress
}

// RegistryError says that an image could not be pulled from its registry:
// unreachable, refused, or the image is not there.
type RegistryError struct {
	Ref      string
	Registry string
	// Status is the HTTP status the registry answered, 0 when it could
	// not be reached.
	Status int
	Err    error
}

func (e *RegistryError) Error() string {
	if e.Status != 0 {
		return fmt.Sprintf("pull %s: registry %s answered %d %s: %v", e.Ref, e.Registry, e.Status, http.StatusText(e.Status), e.Err)
	}
	return fmt.Sprintf("pull %s: cannot reach registry %s: %v", e.Ref, e.Registry, e.Err)
}

func (e *RegistryError) Unwrap() error { return e.Err }

// PullOptions say how Pull reaches the registry.
type PullOptions struct {
	ImportOptions
	// Keychain finds credentials for the registry; nil means
	// authn.DefaultKeychain (the docker login of the user).
	Keychain authn.Keychain
	// Transport carries the requests; nil means remote.DefaultTransport,
	// which honours the host's HTTPS_PROXY, HTTP_PROXY and NO_PROXY.
	Transport http.RoundTripper
}

// IsImageRef reports whether s reads as a registry image reference
// (REGISTRY/REPO:TAG, REPO:TAG, REPO@DIGEST) rather than a template name:
// it has a "/", ":" or "@" and parses as a reference.
func IsImageRef(s string) bool {
	if !strings.ContainsAny(s, "/:@") {
		return false
	}
	_, err := name.ParseReference(s)
	return err == nil
}

// PulledSource is the Source prefix of templates pulled from ref: "image
// REF@".
func PulledSource(ref name.Reference) string { return "image " + ref.Name() + "@" }

// PulledFrom reports whether t was pulled from the image reference ref
// (its Source starts with PulledSource(ref)).
func PulledFrom(t Template, ref string) bool {
	r, err := name.ParseReference(ref)
	return err == nil && strings.HasPrefix(t.Source, PulledSource(r))
}

// FindPulled returns the newest template pulled from ref, if any.
func FindPulled(cacheDir, ref string) (Template, bool) {
	all, _ := List(cacheDir)
	var best Template
	found := false
	for _, t := range all {
		if PulledFrom(t, ref) && (!found || t.Created.After(best.Created)) {
			best, found = t, true
		}
	}
	return best, found
}

// Pull makes a template of the image ref from its registry, for Platform.
// A template already pulled from ref at the digest the registry names now
// is returned as it is, without downloading the layers. The template's
// Source is "image REF@DIGEST". Registry failures (unreachable, refused,
// not found, a download that broke off) come back as *RegistryError, so a
// caller can fall back to FindPulled. The other rules are importImage's.
func Pull(ctx context.Context, cacheDir, ref string, opts PullOptions) (Template, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return Template{}, fmt.Errorf("image reference %q: %w", ref, err)
	}
	if opts.Name == "" {
		opts.Name = NameFor(r.String())
	}
	keychain := opts.Keychain
	if keychain == nil {
		keychain = authn.DefaultKeychain
	}
	rt := opts.Transport
	if rt == nil {
		rt = remote.DefaultTransport
	}
	ropts := []remote.Option{
		remote.WithContext(ctx),
		remote.WithAuthFromKeychain(keychain),
		remote.WithTransport(rt),
		remote.WithPlatform(Platform),
		remote.WithRetryBackoff(remote.Backoff{Duration: 500 * time.Millisecond, Factor: 2, Steps: 2}),
	}
	regErr := func(err error) error {
		if errors.Is(err, context.Canceled) {
			return err
		}
		re := &RegistryError{Ref: r.String(), Registry: r.Context().RegistryStr(), Err: err}
		if te, ok := errors.AsType[*transport.Error](err); ok {
			re.Status = te.StatusCode
		}
		return re
	}
	progress := opts.progress()
	fmt.Fprintf(progress, "pulling %s...\n", r)
	desc, err := remote.Get(r, ropts...)
	if err != nil {
		return Template{}, regErr(err)
	}
	source := PulledSource(r) + desc.Digest.String()
	if t, err := Lookup(cacheDir, opts.Name); err == nil && t.Source == source {
		fmt.Fprintf(progress, "template %s is up to date with %s\n", t.Name, desc.Digest)
		return t, nil
	}
	img, err := desc.Image()
	if err != nil {
		return Template{}, regErr(err)
	}
	t, err := importImage(ctx, cacheDir, img, source, opts.ImportOptions)
	if se, ok := errors.AsType[*sourceError](err); ok {
		return Template{}, regErr(se.err)
	}
	return t, err
}

// LoadFile makes a template of the file or folder at path: a `docker save`
// tarball (plain or gzip-compressed), an OCI image layout folder, an OCI
// archive (a tar of a layout), or a file written by SaveFile. Its Source
// is FileSource's "file PATH@sha256:HEX", the hash of the file itself.
// An image file with several images is refused. The other rules are
// importImage's.
func LoadFile(ctx context.Context, cacheDir, path string, opts ImportOptions) (Template, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return Template{}, err
	}
	st, err := os.Stat(abs)
	if err != nil {
		return Template{}, fmt.Errorf("load %s: %w", path, err)
	}
	source, err := FileSource(cacheDir, abs)
	if err != nil {
		return Template{}, fmt.Errorf("load %s: %w", path, err)
	}
	if st.IsDir() {
		img, tag, err := layoutImage(abs)
		if err != nil {
			return Template{}, fmt.Errorf("load %s: %w", path, err)
		}
		return loadImage(ctx, cacheDir, abs, source, img, tag, opts)
	}
	kind, err := sniff(abs)
	if err != nil {
		return Template{}, fmt.Errorf("load %s: %w", path, err)
	}
	switch kind {
	case kindSaved:
		return loadSaved(ctx, cacheDir, abs, source, opts)
	case kindGzip, kindOCIArchive:
		// Unpacked into a temporary folder in the cache first: gzip is
		// not seekable, and an OCI archive is read as a layout.
		return withTemp(ctx, cacheDir, func(tmp string, budget *diskBudget) (Template, error) {
			img, tag, err := unpackImageFile(abs, kind, tmp, budget)
			if err != nil {
				return Template{}, fmt.Errorf("load %s: %w", path, err)
			}
			if opts.Name == "" {
				opts.Name = defaultFileName(abs, tag)
			}
			return importImageLocked(ctx, templatesDir(cacheDir), img, source, opts, budget)
		})
	case kindDockerSave:
		img, tag, err := dockerSaveImage(abs)
		if err != nil {
			return Template{}, fmt.Errorf("load %s: %w", path, err)
		}
		return loadImage(ctx, cacheDir, abs, source, img, tag, opts)
	}
	return Template{}, fmt.Errorf("load %s: %w", path, ErrUnknownFormat)
}

// FileSource returns the Source LoadFile records for path: "file
// ABS@sha256:HEX", the sha256 of the file (of a folder: of its listing,
// see treeDigest), so a caller can reuse a template loaded from the same
// content before: a file edited or replaced in place has another source.
// Hashes are remembered in cacheDir (see hashCache): a file whose size,
// times, inode or device changed is hashed again.
func FileSource(cacheDir, path string) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", err
	}
	hc := openHashCache(cacheDir)
	defer hc.save()
	st, err := os.Stat(abs)
	if err != nil {
		return "", err
	}
	var sum string
	switch {
	case st.IsDir():
		sum, err = treeDigest(abs, hc)
	case st.Mode().IsRegular():
		sum, err = hc.sum(abs)
	default:
		err = fmt.Errorf("%s is not a regular file or a folder", abs)
	}
	if err != nil {
		return "", err
	}
	return "file " + abs + "@sha256:" + sum, nil
}

func loadImage(ctx context.Context, cacheDir, abs, source string, img v1.Image, tag string, opts ImportOptions) (Template, error) {
	if opts.Name == "" {
		opts.Name = defaultFileName(abs, tag)
	}
	return importImage(ctx, cacheDir, img, source, opts)
}

func defaultFileName(abs, tag string) string {
	if tag != "" {
		return NameFor(tag)
	}
	base := filepath.Base(abs)
	for _, ext := range []string{".gz", ".tgz", ".tar", ".oci", ".sbx"} {
		base = strings.TrimSuffix(base, ext)
	}
	return NameFor(base)
}

// NameFor turns an image reference or a file name into a template name:
// letters, digits, '.', '_' and '-' are kept, every other run of
// characters becomes one '-' ("registry:5000/team/app:v2" becomes
// "registry-5000-team-app-v2"); at most 63 characters, never starting
// with '.' or '-'; "image" when nothing is left.
func NameFor(s string) string {
	var b strings.Builder
	dash := false
	for _, c := range s {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-'
		if !ok {
			if !dash {
				b.WriteByte('-')
				dash = true
			}
			continue
		}
		b.WriteRune(c)
		dash = c == '-'
	}
	out := strings.Trim(b.String(), "-.")
	if len(out) > 63 {
		out = strings.TrimRight(out[:63], "-.")
	}
	if out == "" {
		return "image"
	}
	return out
}

// checkImportName rejects names an import may not take.
func checkImportName(name string) error {
	if err := validName(name); err != nil {
		return err
	}
	if IsBuiltin(name) {
		return fmt.Errorf("%w: %s", ErrBuiltinName, name)
	}
	return nil
}

// importImage flattens img (whiteouts applied) into a tree, checks that
// it has the agent user (*MissingUserError otherwise) and packs it into
// template opts.Name with the given Source. It needs root (files keep
// their owners; ErrNeedRoot otherwise) and mkfs.ext4. It holds the
// templates lock throughout; a failure leaves no template and no
// temporary files behind (a killed process's are removed by the next
// holder of the lock). A template of the same name is replaced (see
// ImportOptions); a built-in name is refused with ErrBuiltinName.
func importImage(ctx context.Context, cacheDir string, img v1.Image, source string, opts ImportOptions) (Template, error) {
	if err := checkImportName(opts.Name); err != nil {
		return Template{}, err
	}
	if os.Geteuid() != 0 {
		return Template{}, fmt.Errorf("%w (the image's files keep their owners and device nodes): run sbx as root", ErrNeedRoot)
	}
	dir := templatesDir(cacheDir)
	unlock, err := lockDir(ctx, dir)
	if err != nil {
		return Template{}, err
	}
	defer unlock()
	budget, err := newBudget(dir)
	if err != nil {
		return Template{}, err
	}
	return importImageLocked(ctx, dir, img, source, opts, budget)
}

// importImageLocked is importImage for a caller holding the templates
// lock; budget is charged for the tree and the packed image.
func importImageLocked(ctx context.Context, dir string, img v1.Image, source string, opts ImportOptions, budget *diskBudget) (Template, error) {
	if err := checkImportName(opts.Name); err != nil {
		return Template{}, err
	}
	if os.Geteuid() != 0 {
		return Template{}, fmt.Errorf("%w (the image's files keep their owners and device nodes): run sbx as root", ErrNeedRoot)
	}
	old, hadOld, err := replaceable(dir, opts)
	if err != nil {
		return Template{}, err
	}
	progress := opts.progress()
	start := time.Now()
	tmp, err := os.MkdirTemp(dir, ".tmp-import-")
	if err != nil {
		return Template{}, fmt.Errorf("create template temp dir: %w", err)
	}
	defer os.RemoveAll(tmp)
	root := filepath.Join(tmp, "root")
	if err := os.Mkdir(root, 0o755); err != nil {
		return Template{}, err
	}
	if err := os.Chmod(root, 0o755); err != nil {
		return Template{}, err
	}
	layers, err := img.Layers()
	if err != nil {
		return Template{}, &sourceError{fmt.Errorf("read image layers: %w", err)}
	}
	var compressed int64
	for _, l := range layers {
		if n, err := l.Size(); err == nil {
			compressed += n
		}
	}
	fmt.Fprintf(progress, "extracting %d layers (%d MiB) for template %s...\n", len(layers), compressed>>20, opts.Name)
	err = flattenLayers(ctx, layers, root, extractOptions{Owners: true, Budget: budget, Progress: func(n int64) {
		fmt.Fprintf(progress, "  %d MiB written\n", n>>20)
	}})
	if err != nil {
		if ctx.Err() != nil {
			return Template{}, ctx.Err()
		}
		return Template{}, err
	}
	if err := checkAgentUser(root); err != nil {
		return Template{}, err
	}
	if err := ensureDirs(root); err != nil {
		return Template{}, err
	}
	if !hasFile(root, "bin/bash") && !hasFile(root, "usr/bin/bash") {
		fmt.Fprintf(progress, "note: the image has no bash, which the agents and `sbx run` need; run its programs with `sbx create -t %s --name NAME .` and `sbx exec NAME /bin/PROGRAM`\n", opts.Name)
	}
	m := manifest{Source: source, Docker: hasDockerd(root)}
	// The packed image: the tree plus a tenth plus headroom (sparse, so
	// this is the most it takes), while the tree is still there.
	if budget != nil {
		if err := budget.take(budget.used/10 + budget.used + headroomBytes); err != nil {
			return Template{}, err
		}
	}
	t, err := pack(ctx, dir, opts.Name, root, m, progress)
	if err != nil {
		return Template{}, err
	}
	dropOldImage(dir, old, hadOld, t, opts.InUse)
	fmt.Fprintf(progress, "template %s ready in %.0fs\n", t.Name, time.Since(start).Seconds())
	return t, nil
}

// replaceable returns the template opts.Name names now, if any, after
// asking opts.Replace. The caller holds the templates lock.
func replaceable(dir string, opts ImportOptions) (Template, bool, error) {
	old, err := Lookup(filepath.Dir(dir), opts.Name)
	if err != nil {
		return Template{}, false, nil
	}
	if opts.Replace != nil {
		if err := opts.Replace(old); err != nil {
			return Template{}, false, err
		}
	}
	return old, true, nil
}

// dropOldImage deletes the image a replaced template named, unless a
// template or (per inUse) a sandbox still uses it. The caller holds the
// templates lock.
func dropOldImage(dir string, old Template, hadOld bool, now Template, inUse func(string) bool) {
	if !hadOld || old.ID == now.ID || inUse == nil || inUse(old.ID) {
		return
	}
	all, _ := List(filepath.Dir(dir))
	for _, o := range all {
		if o.ID == old.ID {
			return
		}
	}
	os.Remove(old.Image)
}

// ensureDirs adds the folders the guest agent expects and an image may
// lack: /tmp (1777) and /etc/profile.d, /etc/ssl/certs, /etc/sudoers.d are
// made by the agent itself; mount points /proc, /sys, /dev, /run too.
func ensureDirs(root string) error {
	r, err := os.OpenRoot(root)
	if err != nil {
		return err
	}
	defer r.Close()
	if _, err := r.Lstat("tmp"); errors.Is(err, fs.ErrNotExist) {
		if err := r.Mkdir("tmp", 0o777); err != nil {
			return fmt.Errorf("create /tmp: %w", err)
		}
		if err := r.Chmod("tmp", 0o777|os.ModeSticky); err != nil {
			return fmt.Errorf("chmod /tmp: %w", err)
		}
	}
	return nil
}

// dockerdPaths are where Docker Engine's daemon may be: Debian's docker.io
// installs /usr/sbin/dockerd, Docker's own packages /usr/bin/dockerd.
var dockerdPaths = []string{"usr/sbin/dockerd", "usr/bin/dockerd"}

// hasDockerd reports whether the tree at root has dockerd at one of
// dockerdPaths. Every name is looked up through an os.Root, so symbolic
// links (usr -> /) cannot make it look at the host's files.
func hasDockerd(root string) bool {
	r, err := os.OpenRoot(root)
	if err != nil {
		return false
	}
	defer r.Close()
	for _, p := range dockerdPaths {
		if _, err := r.Lstat(p); err == nil {
			return true
		}
	}
	return false
}

// hasFile reports whether name exists in the tree at root, following
// symbolic links inside it.
func hasFile(root, name string) bool {
	r, err := os.OpenRoot(root)
	if err != nil {
		return false
	}
	defer r.Close()
	_, err = r.Stat(name)
	return err == nil
}

// Kinds of image files.
const (
	kindUnknown = iota
	kindDockerSave
	kindOCIArchive
	kindGzip
	kindSaved
)

// sniff tells the kind of the file at path from its first bytes and its
// tar entries.
func sniff(path string) (int, error) {
	f, err := os.Open(path)
	if err != nil {
		return kindUnknown, err
	}
	defer f.Close()
	br := bufio.NewReader(f)
	magic, _ := br.Peek(2)
	if len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		return kindGzip, nil
	}
	tr := tar.NewReader(f)
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return kindUnknown, err
	}
	var manifest, ociLayout, index bool
	for i := 0; ; i++ {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			if i == 0 {
				return kindUnknown, ErrUnknownFormat
			}
			return kindUnknown, fmt.Errorf("read tar: %w", err)
		}
		n := strings.TrimPrefix(h.Name, "./")
		if i == 0 && n == savedHeaderName {
			return kindSaved, nil
		}
		switch n {
		case "manifest.json":
			manifest = true
		case "oci-layout":
			ociLayout = true
		case "index.json":
			index = true
		}
	}
	switch {
	case manifest:
		return kindDockerSave, nil
	case ociLayout && index:
		return kindOCIArchive, nil
	}
	return kindUnknown, ErrUnknownFormat
}

// dockerSaveImage opens the single image of a docker save tarball and its
// first repository tag.
func dockerSaveImage(path string) (v1.Image, string, error) {
	opener := func() (io.ReadCloser, error) { return os.Open(path) }
	m, err := tarball.LoadManifest(opener)
	if err != nil {
		return nil, "", fmt.Errorf("read docker save manifest: %w", err)
	}
	if len(m) != 1 {
		var tags []string
		for _, d := range m {
			tags = append(tags, d.RepoTags...)
		}
		return nil, "", fmt.Errorf("the tarball holds %d images (%s); save one image per file", len(m), strings.Join(tags, ", "))
	}
	var tag string
	if len(m[0].RepoTags) > 0 {
		tag = m[0].RepoTags[0]
	}
	img, err := tarball.Image(opener, nil)
	if err != nil {
		return nil, "", fmt.Errorf("read docker save tarball: %w", err)
	}
	return img, tag, nil
}

// OCI annotations that name an image in a layout.
const (
	annotationRefName    = "org.opencontainers.image.ref.name"
	annotationContainerd = "io.containerd.image.name"
)

// layoutImage opens the image of an OCI layout folder for Platform: the
// single image of its index (looking into nested indexes), and its name
// from the annotations.
func layoutImage(dir string) (v1.Image, string, error) {
	if _, err := os.Stat(filepath.Join(dir, "oci-layout")); err != nil {
		return nil, "", fmt.Errorf("%w (a folder must be an OCI image layout with oci-layout and index.json)", ErrUnknownFormat)
	}
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		return nil, "", fmt.Errorf("read OCI layout: %w", err)
	}
	return indexImage(idx, "")
}

func indexImage(idx v1.ImageIndex, tag string) (v1.Image, string, error) {
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, "", fmt.Errorf("read OCI index: %w", err)
	}
	var imgs []v1.Descriptor
	var nested []v1.Descriptor
	for _, d := range im.Manifests {
		if d.Platform != nil && !d.Platform.Satisfies(Platform) {
			continue
		}
		switch {
		case d.MediaType.IsImage():
			imgs = append(imgs, d)
		case d.MediaType.IsIndex():
			nested = append(nested, d)
		}
	}
	pickTag := func(d v1.Descriptor) string {
		if n := d.Annotations[annotationContainerd]; n != "" {
			return n
		}
		if n := d.Annotations[annotationRefName]; n != "" {
			return n
		}
		return tag
	}
	switch {
	case len(imgs) == 1:
		img, err := idx.Image(imgs[0].Digest)
		if err != nil {
			return nil, "", fmt.Errorf("read OCI image: %w", err)
		}
		return img, pickTag(imgs[0]), nil
	case len(imgs) == 0 && len(nested) == 1:
		child, err := idx.ImageIndex(nested[0].Digest)
		if err != nil {
			return nil, "", fmt.Errorf("read OCI index: %w", err)
		}
		return indexImage(child, pickTag(nested[0]))
	case len(imgs) == 0 && len(nested) == 0:
		return nil, "", fmt.Errorf("the OCI index has no image for %s/%s", Platform.OS, Platform.Architecture)
	}
	return nil, "", fmt.Errorf("the OCI index has %d images for %s/%s; keep one image per layout", len(imgs)+len(nested), Platform.OS, Platform.Architecture)
}

// unpackImageFile turns a gzip-compressed tarball or an OCI archive into
// files under tmp and opens its image; what it writes is charged to
// budget.
func unpackImageFile(path string, kind int, tmp string, budget *diskBudget) (v1.Image, string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, "", err
	}
	defer f.Close()
	if kind == kindGzip {
		zr, err := gzip.NewReader(bufio.NewReaderSize(f, 1<<20))
		if err != nil {
			return nil, "", fmt.Errorf("read gzip: %w", err)
		}
		plain := filepath.Join(tmp, "image.tar")
		out, err := os.Create(plain)
		if err != nil {
			return nil, "", err
		}
		if _, err := io.Copy(budget.writer(out), zr); err != nil {
			out.Close()
			return nil, "", fmt.Errorf("decompress: %w", err)
		}
		if err := out.Close(); err != nil {
			return nil, "", err
		}
		k, err := sniff(plain)
		if err != nil {
			return nil, "", err
		}
		switch k {
		case kindDockerSave:
			return dockerSaveImage(plain)
		case kindOCIArchive:
			return unpackImageFile(plain, k, tmp, budget)
		}
		return nil, "", ErrUnknownFormat
	}
	dir := filepath.Join(tmp, "layout")
	if err := os.Mkdir(dir, 0o700); err != nil {
		return nil, "", err
	}
	if err := unpackLayout(f, dir, budget); err != nil {
		return nil, "", err
	}
	return layoutImage(dir)
}

// unpackLayout writes the regular files and folders of an OCI archive into
// dir; an OCI layout needs nothing else. What it writes is charged to
// budget.
func unpackLayout(r io.Reader, dir string, budget *diskBudget) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read OCI archive: %w", err)
		}
		n, err := entryName(h.Name)
		if err != nil {
			return err
		}
		switch h.Typeflag {
		case tar.TypeDir:
			if err := root.MkdirAll(n, 0o700); err != nil {
				return err
			}
		case tar.TypeReg:
			if err := budget.take(roundUp(h.Size, 4096) + entryCost); err != nil {
				return err
			}
			if d := filepath.Dir(n); d != "." {
				if err := root.MkdirAll(d, 0o700); err != nil {
					return err
				}
			}
			f, err := root.OpenFile(n, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
			if err != nil {
				return err
			}
			_, err = io.Copy(f, tr)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("unpack %s: %w", n, err)
			}
		}
	}
}

// withTemp runs fn with a temporary folder in the templates cache and the
// budget of the import, holding the templates lock.
func withTemp(ctx context.Context, cacheDir string, fn func(tmp string, budget *diskBudget) (Template, error)) (Template, error) {
	if os.Geteuid() != 0 {
		return Template{}, fmt.Errorf("%w (the image's files keep their owners and device nodes): run sbx as root", ErrNeedRoot)
	}
	dir := templatesDir(cacheDir)
	unlock, err := lockDir(ctx, dir)
	if err != nil {
		return Template{}, err
	}
	defer unlock()
	tmp, err := os.MkdirTemp(dir, ".tmp-unpack-")
	if err != nil {
		return Template{}, fmt.Errorf("create template temp dir: %w", err)
	}
	defer os.RemoveAll(tmp)
	budget, err := newBudget(dir)
	if err != nil {
		return Template{}, err
	}
	return fn(tmp, budget)
}

// hashCacheFile, in the templates folder, remembers the sha256 of files
// loaded or given to -t, so an unchanged file is not read again.
const hashCacheFile = ".file-hashes.json"

// hashCacheSize is how many files the cache remembers.
const hashCacheSize = 256

// hashEntry is what hashCache knows of one file: its sha256 and the stat
// fields that must all match for it to be reused. The change time cannot
// be set by users, so content rewritten with its old modification time
// restored is hashed again.
type hashEntry struct {
	Size    int64     `json:"size"`
	ModNs   int64     `json:"mtime"`
	ChangNs int64     `json:"ctime"`
	Ino     uint64    `json:"ino"`
	Dev     uint64    `json:"dev"`
	Sum     string    `json:"sha256"`
	Used    time.Time `json:"used"`
}

// hashCache is the loaded hashCacheFile.
type hashCache struct {
	path    string
	entries map[string]hashEntry
	dirty   bool
}

func openHashCache(cacheDir string) *hashCache {
	hc := &hashCache{path: filepath.Join(templatesDir(cacheDir), hashCacheFile), entries: map[string]hashEntry{}}
	if b, err := os.ReadFile(hc.path); err == nil {
		json.Unmarshal(b, &hc.entries) //nolint:errcheck // a broken cache is an empty one
	}
	return hc
}

// save writes the cache back, keeping the most recently used entries.
// Failures are ignored: the cache only saves time.
func (hc *hashCache) save() {
	if !hc.dirty {
		return
	}
	if len(hc.entries) > hashCacheSize {
		keys := slices.Collect(maps.Keys(hc.entries))
		slices.SortFunc(keys, func(a, b string) int { return hc.entries[b].Used.Compare(hc.entries[a].Used) })
		for _, k := range keys[hashCacheSize:] {
			delete(hc.entries, k)
		}
	}
	b, err := json.Marshal(hc.entries)
	if err != nil {
		return
	}
	if err := os.MkdirAll(filepath.Dir(hc.path), 0o700); err != nil {
		return
	}
	safefile.Write(hc.path, b, 0o600) //nolint:errcheck // see above
}

// sum returns the sha256 of the regular file at abs, from the cache when
// its stat fields all match, else by reading it.
func (hc *hashCache) sum(abs string) (string, error) {
	f, err := os.Open(abs)
	if err != nil {
		return "", err
	}
	defer f.Close()
	key := func() (hashEntry, error) {
		var st unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &st); err != nil {
			return hashEntry{}, fmt.Errorf("stat %s: %w", abs, err)
		}
		if st.Mode&unix.S_IFMT != unix.S_IFREG {
			return hashEntry{}, fmt.Errorf("%s is not a regular file", abs)
		}
		return hashEntry{Size: st.Size, ModNs: st.Mtim.Nano(), ChangNs: st.Ctim.Nano(), Ino: st.Ino, Dev: st.Dev}, nil
	}
	k, err := key()
	if err != nil {
		return "", err
	}
	if e, ok := hc.entries[abs]; ok && e.Size == k.Size && e.ModNs == k.ModNs && e.ChangNs == k.ChangNs && e.Ino == k.Ino && e.Dev == k.Dev {
		e.Used = time.Now()
		hc.entries[abs], hc.dirty = e, true
		return e.Sum, nil
	}
	h := sha256.New()
	if _, err := io.Copy(h, bufio.NewReaderSize(f, 1<<20)); err != nil {
		return "", fmt.Errorf("hash %s: %w", abs, err)
	}
	after, err := key()
	if err != nil {
		return "", err
	}
	k.Sum, k.Used = hex.EncodeToString(h.Sum(nil)), time.Now()
	if after == (hashEntry{Size: k.Size, ModNs: k.ModNs, ChangNs: k.ChangNs, Ino: k.Ino, Dev: k.Dev}) {
		// Remembered only if the file did not change while it was read.
		hc.entries[abs], hc.dirty = k, true
	}
	return k.Sum, nil
}

// treeDigest hashes a folder (an OCI layout): a line per entry, in
// lexical order, with its path and the sha256 of a regular file or the
// target of a symbolic link.
func treeDigest(dir string, hc *hashCache) (string, error) {
	h := sha256.New()
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		switch {
		case d.Type().IsRegular():
			sum, err := hc.sum(p)
			if err != nil {
				return err
			}
			fmt.Fprintf(h, "file %q %s\n", rel, sum)
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			fmt.Fprintf(h, "link %q %q\n", rel, target)
		case d.IsDir():
			fmt.Fprintf(h, "dir %q\n", rel)
		}
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("hash %s: %w", dir, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
