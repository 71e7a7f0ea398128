package jsonbody

import (
	"strings"
	"testing"
)

type inner struct {
	User string `json:"user"`
}

type body struct {
	inner
	Action    string            `json:"action"`
	Resources []string          `json:"resources,omitempty"`
	Env       map[string]string `json:"env"`
	Nested    *struct {
		Port int `json:"port"`
	} `json:"nested"`
	Items []struct {
		Name string `json:"name"`
	} `json:"items"`
	Any any `json:"any"`
}

func TestDecode(t *testing.T) {
	for in, want := range map[string]string{
		`{"action":"deny","resources":["a"]}`:            "",
		`{"user":"agent","env":{"PATH":"1","Path":"2"}}`: "", // map keys are exact
		`{"nested":{"port":1},"items":[{"name":"x"}]}`:   "",
		`{"any":{"a":1,"A":2}}`:                          "",
		`{"action":"deny","ACTION":"allow"}`:             `key "ACTION": spell it "action"`,
		`{"action":"deny","action":"allow"}`:             `key "action" given twice`,
		`{"env":{"A":"1","A":"2"}}`:                      `key "A" given twice in env`,
		`{"nested":{"port":1,"Port":2}}`:                 `key "Port" in nested: spell it "port"`,
		`{"items":[{"name":"x","name":"y"}]}`:            `key "name" given twice in items[0]`,
		`{"any":{"a":1,"a":2}}`:                          `given twice`,
		`{"User":"root"}`:                                `spell it "user"`,
		`{"other":1}`:                                    `unknown key "other"`,
		`{"action":"deny"} {}`:                           "data after the JSON value",
		`{"action":`:                                     "unexpected EOF",
		``:                                               "EOF",
	} {
		var b body
		err := Decode(strings.NewReader(in), &b)
		switch {
		case want == "" && err != nil:
			t.Errorf("%s: %v", in, err)
		case want != "" && (err == nil || !strings.Contains(err.Error(), want)):
			t.Errorf("%s: %v, want %q", in, err, want)
		}
	}
}

func TestDecodeAllowUnknown(t *testing.T) {
	for in, want := range map[string]string{
		`{"action":"deny","newer":{"x":1}}`: "",
		`{"newer":1,"newer":2}`:             "given twice",
		`{"action":"a","Action":"b"}`:       `spell it "action"`,
	} {
		var b body
		err := DecodeAllowUnknown(strings.NewReader(in), &b)
		switch {
		case want == "" && err != nil:
			t.Errorf("%s: %v", in, err)
		case want != "" && (err == nil || !strings.Contains(err.Error(), want)):
			t.Errorf("%s: %v, want %q", in, err, want)
		}
	}
}
