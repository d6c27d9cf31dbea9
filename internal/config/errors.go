package config

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Error is one configuration problem at a position in a file. Line and Col
// are 1-based; both are 0 when the problem has no position (for example a
// file that cannot be read).
type Error struct {
	File  string
	Line  int
	Col   int
	Field string // path like routes[3].match.path; empty for file-level errors
	Msg   string
}

// NewError returns an Error; it exists so later stages (the gateway compiling
// certificates, say) can report in the same FILE:LINE:COL: FIELD: message form,
// usually with the position from Config.Where.
func NewError(file string, line, col int, field, msg string) Error {
	return Error{File: file, Line: line, Col: col, Field: field, Msg: msg}
}

// Error formats the error as FILE:LINE:COL: FIELD: message.
func (e Error) Error() string {
	var b strings.Builder
	e.write(&b)
	return b.String()
}

func (e Error) write(b *strings.Builder) {
	if e.File != "" {
		b.WriteString(e.File)
		if e.Line > 0 {
			b.WriteByte(':')
			b.WriteString(strconv.Itoa(e.Line))
			b.WriteByte(':')
			b.WriteString(strconv.Itoa(e.Col))
		}
		b.WriteString(": ")
	}
	if e.Field != "" {
		b.WriteString(e.Field)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
}

// Errors is every problem found in a configuration. Load returns a non-nil
// *Errors, never an empty one, when the configuration is invalid.
type Errors struct {
	List []Error
}

// Error prints one FILE:LINE:COL: FIELD: message line per error, sorted by
// file, line and column.
func (e *Errors) Error() string {
	var b strings.Builder
	for i, err := range e.List {
		if i > 0 {
			b.WriteByte('\n')
		}
		err.write(&b)
	}
	return b.String()
}

// Unwrap gives errors.As and errors.Is access to each Error.
func (e *Errors) Unwrap() []error {
	out := make([]error, len(e.List))
	for i, err := range e.List {
		out[i] = err
	}
	return out
}

// add appends one error.
func (e *Errors) add(err Error) { e.List = append(e.List, err) }

// sort orders the list by file, line, column, field and message, and drops
// exact duplicates (an alias decoded twice reports its problem once).
func (e *Errors) sort() {
	slices.SortStableFunc(e.List, func(a, b Error) int {
		return cmp.Or(
			cmp.Compare(a.File, b.File),
			cmp.Compare(a.Line, b.Line),
			cmp.Compare(a.Col, b.Col),
			cmp.Compare(a.Field, b.Field),
			cmp.Compare(a.Msg, b.Msg),
		)
	})
	e.List = slices.Compact(e.List)
}

// orNil returns e when it holds errors, else nil, so callers never see a
// non-nil error interface wrapping an empty list.
func (e *Errors) orNil() error {
	if len(e.List) == 0 {
		return nil
	}
	e.sort()
	return e
}

// pos is a position in one file.
type pos struct {
	file      string
	line, col int
}

func (p pos) String() string {
	if p.file == "" {
		return ""
	}
	if p.line == 0 {
		return p.file
	}
	return p.file + ":" + strconv.Itoa(p.line) + ":" + strconv.Itoa(p.col)
}

func errAt(p pos, field, format string, args ...any) Error {
	msg := format
	if len(args) > 0 {
		msg = fmt.Sprintf(format, args...)
	}
	return Error{File: p.file, Line: p.line, Col: p.col, Field: field, Msg: msg}
}
