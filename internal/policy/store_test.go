package policy

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestStoreRoundTrip(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "config")
	s := NewStore(dir)
	f, err := s.Load()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(File{Version: 1, Rules: []Rule{}}, f); diff != "" {
		t.Errorf("missing file (-want +got):\n%s", diff)
	}
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	want := File{Version: 1, Default: PresetDenyAll, Rules: rules(t, "allow example.com", "deny **.evil.com @sb1")}
	want.Rules[0].Created = now
	if err := s.Update(func(f *File) error { *f = want; return nil }); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(dir)
	if err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("config folder: %v %v", st.Mode(), err)
	}
	st, err = os.Stat(s.Path())
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("policy file: %v %v", st.Mode(), err)
	}
	got, err := s.Load()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}
	// fn's error aborts the write.
	boom := errors.New("boom")
	if err := s.Update(func(f *File) error { f.Rules = nil; return boom }); !errors.Is(err, boom) {
		t.Errorf("Update = %v", err)
	}
	// An invalid result is refused.
	if err := s.Update(func(f *File) error { f.Default = "open"; return nil }); err == nil {
		t.Error("invalid default written")
	}
	if got2, _ := s.Load(); !cmp.Equal(got, got2) {
		t.Error("failed updates changed the file")
	}
	// No temp files left behind.
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.Contains(e.Name(), ".tmp") {
			t.Errorf("left %s", e.Name())
		}
	}
	n, err := s.RemoveSandbox("sb1")
	if err != nil || n != 1 {
		t.Fatalf("RemoveSandbox = %d, %v", n, err)
	}
	got, _ = s.Load()
	if len(got.Rules) != 1 || got.Rules[0].Resource != "example.com" {
		t.Errorf("after RemoveSandbox: %+v", got.Rules)
	}
	if err := s.Reset(); err != nil {
		t.Fatal(err)
	}
	got, _ = s.Load()
	if diff := cmp.Diff(File{Version: 1, Rules: []Rule{}}, got); diff != "" {
		t.Errorf("after Reset (-want +got):\n%s", diff)
	}
}

func TestStoreConcurrentUpdates(t *testing.T) {
	s := NewStore(t.TempDir())
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() {
			r, _ := ParseResource("h" + string(rune('a'+i)) + ".example.com")
			if err := s.Update(func(f *File) error {
				f.Rules = append(f.Rules, NewRule(Allow, r, "", "", time.Time{}))
				return nil
			}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	f, err := s.Load()
	if err != nil || len(f.Rules) != 20 {
		t.Errorf("after 20 concurrent updates: %d rules, %v", len(f.Rules), err)
	}
}

func TestStoreMalformed(t *testing.T) {
	for _, c := range []struct {
		name, content, want string
		line                int
	}{
		{"syntax", "{\n  \"version\": 1,\n  \"default\": \"balanced\"\n  \"rules\": []\n}\n", "invalid character", 4},
		{"type", "{\n  \"version\": \"one\"\n}\n", "cannot unmarshal", 2},
		{"truncated", "{\n  \"version\": 1,\n", "truncated", 3},
		{"empty", "", "truncated", 1},
		{"unknown field", "{\"version\": 1, \"rulez\": []}", "unknown field", 0},
		{"bad rule", "{\"version\": 1, \"rules\": [{\"id\": \"x\", \"action\": \"allow\", \"resource\": \"a..b\"}]}", `rules[0].resource "a..b"`, 0},
		{"trailing", "{\"version\": 1}\n{}", "extra data", 2},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			s := NewStore(dir)
			if err := os.WriteFile(s.Path(), []byte(c.content), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := s.Load()
			fe, ok := errors.AsType[*FileError](err)
			if !ok {
				t.Fatalf("Load = %v, want a *FileError", err)
			}
			if fe.Line != c.line || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), s.Path()) {
				t.Errorf("Load = %q (line %d), want line %d and %q", err, fe.Line, c.line, c.want)
			}
			if c.line > 0 && !strings.Contains(err.Error(), "line ") {
				t.Errorf("error %q has no line", err)
			}
			e, err := NewEngine(s, EngineOptions{})
			if err == nil || e.Err() == nil {
				t.Fatal("engine accepted a malformed file")
			}
			d := e.Evaluate(Request{Host: "api.anthropic.com", Port: 443})
			if d.Allow || !strings.Contains(d.Reason, "policy file") {
				t.Errorf("malformed file decided %+v", d)
			}
			if err := s.Update(func(*File) error { return nil }); err == nil {
				t.Error("Update over a malformed file succeeded")
			}
		})
	}
}

func TestEngineLiveReload(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := NewStore(t.TempDir())
		e, err := NewEngine(s, EngineOptions{})
		if err != nil {
			t.Fatal(err)
		}
		req := Request{Host: "example.com", Port: 443, Sandbox: "sb1"}
		if e.Evaluate(req).Allow {
			t.Fatal("allowed before any rule")
		}
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error)
		go func() { done <- e.Watch(ctx, 0) }()

		add := func(spec string) {
			t.Helper()
			if err := s.Update(func(f *File) error { f.Rules = append(f.Rules, rules(t, spec)...); return nil }); err != nil {
				t.Fatal(err)
			}
		}
		add("allow example.com @sb1")
		time.Sleep(DefaultWatchInterval + time.Millisecond)
		synctest.Wait()
		if d := e.Evaluate(req); !d.Allow {
			t.Fatalf("rule added while running not in force after one interval: %+v", d)
		}
		add("deny example.com")
		time.Sleep(DefaultWatchInterval + time.Millisecond)
		synctest.Wait()
		if e.Evaluate(req).Allow {
			t.Fatal("deny added while running not in force")
		}
		// A broken file denies everything; a fixed one restores the policy.
		if err := os.WriteFile(s.Path(), []byte("{\n\"version\": 1,,\n}"), 0o600); err != nil {
			t.Fatal(err)
		}
		time.Sleep(DefaultWatchInterval + time.Millisecond)
		synctest.Wait()
		if e.Err() == nil || !strings.Contains(e.Err().Error(), "line 2") {
			t.Fatalf("Err = %v", e.Err())
		}
		if err := s.Reset(); err != nil {
			t.Fatal(err)
		}
		if err := s.Update(func(f *File) error { f.Default = PresetAllowAll; return nil }); err != nil {
			t.Fatal(err)
		}
		time.Sleep(DefaultWatchInterval + time.Millisecond)
		synctest.Wait()
		if e.Err() != nil || !e.Evaluate(req).Allow {
			t.Fatalf("fixed file not in force: %v", e.Err())
		}
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Watch = %v", err)
		}
	})
}
