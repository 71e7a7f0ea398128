// Package jsonbody decodes the JSON bodies of API requests strictly: one
// value, no unknown field, and every object key given once and spelt
// exactly as its field's name. encoding/json alone takes the last of two
// keys and matches them without regard to case, so {"action":"deny",
// "ACTION":"allow"} is an allow to the daemon while a proxy or log that
// reads the first, exactly spelt key sees a deny (found by the twelfth
// review).
package jsonbody

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
)

// Decode reads one JSON value from r into v (a pointer).
func Decode(r io.Reader, v any) error { return decode(r, v, false) }

// DecodeAllowUnknown is Decode that ignores keys v has no field for (a
// client's newer fields), still refusing a repeated or differently spelt
// one.
func DecodeAllowUnknown(r io.Reader, v any) error { return decode(r, v, true) }

func decode(r io.Reader, v any, allowUnknown bool) error {
	data, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	if err := checkKeys(data, reflect.TypeOf(v), allowUnknown); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	if !allowUnknown {
		dec.DisallowUnknownFields()
	}
	if err := dec.Decode(v); err != nil {
		return err
	}
	// One JSON value: anything after it is refused, not ignored.
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("data after the JSON value")
	}
	return nil
}

var jsonUnmarshaler = reflect.TypeFor[json.Unmarshaler]()

// checkKeys walks data's first value beside type t (nil: any).
func checkKeys(data []byte, t reflect.Type, allowUnknown bool) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	err := (&walker{dec, allowUnknown}).walk(t, "")
	if errors.Is(err, io.EOF) {
		return nil // an empty body: the decoder says so
	}
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return nil // the decoder says where
	}
	return err
}

type walker struct {
	dec          *json.Decoder
	allowUnknown bool
}

func (w *walker) walk(t reflect.Type, at string) error {
	dec := w.dec
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t != nil && (reflect.PointerTo(t).Implements(jsonUnmarshaler) || t.Implements(jsonUnmarshaler)) {
		t = nil // decodes itself: only duplicates are checked
	}
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	d, ok := tok.(json.Delim)
	if !ok {
		return nil
	}
	switch d {
	case '[':
		var elem reflect.Type
		if t != nil && (t.Kind() == reflect.Slice || t.Kind() == reflect.Array) {
			elem = t.Elem()
		}
		for i := 0; dec.More(); i++ {
			if err := w.walk(elem, fmt.Sprintf("%s[%d]", at, i)); err != nil {
				return err
			}
		}
	case '{':
		var fields map[string]reflect.Type
		var elem reflect.Type
		if t != nil {
			switch t.Kind() {
			case reflect.Struct:
				fields = map[string]reflect.Type{}
				structFields(t, fields)
			case reflect.Map:
				elem = t.Elem()
			}
		}
		seen := map[string]bool{}
		for dec.More() {
			kt, err := dec.Token()
			if err != nil {
				return err
			}
			k, _ := kt.(string)
			if seen[k] {
				return fmt.Errorf("key %q given twice%s", k, where(at))
			}
			seen[k] = true
			next := elem
			if fields != nil {
				ft, ok := fields[k]
				if !ok {
					for name := range fields {
						if strings.EqualFold(name, k) {
							return fmt.Errorf("key %q%s: spell it %q", k, where(at), name)
						}
					}
					if !w.allowUnknown {
						return fmt.Errorf("unknown key %q%s", k, where(at))
					}
				}
				next = ft
			}
			if err := w.walk(next, at+"."+k); err != nil {
				return err
			}
		}
	}
	_, err = dec.Token() // the closing delimiter
	return err
}

func where(at string) string {
	if at == "" {
		return ""
	}
	return " in " + strings.TrimPrefix(at, ".")
}

// structFields adds t's JSON field names and types to out, the fields of
// untagged embedded structs included (a shallower field wins), as
// encoding/json sees them.
func structFields(t reflect.Type, out map[string]reflect.Type) {
	var embedded []reflect.Type
	for i := range t.NumField() {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, _, _ := strings.Cut(tag, ",")
		if f.Anonymous && name == "" {
			ft := f.Type
			if ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct {
				embedded = append(embedded, ft)
				continue
			}
		}
		if !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		out[name] = f.Type
	}
	for _, et := range embedded {
		inner := map[string]reflect.Type{}
		structFields(et, inner)
		for k, v := range inner {
			if _, ok := out[k]; !ok {
				out[k] = v
			}
		}
	}
}
