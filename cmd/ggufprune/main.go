// Command ggufprune makes GGUF language models smaller by removing whole
// transformer blocks chosen by Block Influence (ShortGPT).
package main

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/ggufprune/ggufprune/prune"
	"github.com/urfave/cli/v2"
	"golang.org/x/term"
)

// Exit codes.
const (
	exitOK    = 0
	exitError = 1 // the command failed: bad input file, I/O error, llama.cpp error
	exitUsage = 2 // the command line is wrong
)

// usageError marks errors in how the command was called.
type usageError struct{ error }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

func main() { os.Exit(run(os.Args, os.Stdout, os.Stderr)) }

func run(args []string, stdout, stderr io.Writer) int {
	app := newApp(stdout, stderr)
	err := app.Run(args)
	if err == nil {
		return exitOK
	}
	fmt.Fprintln(stderr, "ggufprune:", err)
	var ue usageError
	if errors.As(err, &ue) || isCLIUsageError(err) {
		return exitUsage
	}
	return exitError
}

func newApp(stdout, stderr io.Writer) *cli.App {
	return &cli.App{
		Name:  "ggufprune",
		Usage: "remove redundant transformer blocks from GGUF models (ShortGPT Block Influence)",
		Description: "Scores every block of a GGUF model on calibration text with llama.cpp, removes the blocks\n" +
			"whose output is most like their input, and writes a smaller GGUF that llama.cpp loads.\n" +
			"Exit status: 0 success, 1 failure, 2 usage error.",
		Writer:               stdout,
		ErrWriter:            stderr,
		HideHelpCommand:      true,
		EnableBashCompletion: false,
		// Errors are printed and turned into exit codes by run, never by cli.
		ExitErrHandler: func(*cli.Context, error) {},
		OnUsageError: func(_ *cli.Context, err error, _ bool) error {
			return usageError{err}
		},
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return usagef("unknown command %q (see ggufprune --help)", c.Args().First())
			}
			return cli.ShowAppHelp(c)
		},
		Commands: []*cli.Command{
			inspectCommand(),
			pruneCommand(),
			scoreCommand(),
			evalCommand(),
			quantizeCommand(),
		},
	}
}

// isCLIUsageError recognises cli's own complaints about flags and arguments.
func isCLIUsageError(err error) bool {
	var exit cli.ExitCoder
	return errors.As(err, &exit) && exit.ExitCode() == exitUsage
}

// commandUsageErrors makes a command report flag errors as usage errors.
func commandUsageErrors(c *cli.Command) *cli.Command {
	c.OnUsageError = func(_ *cli.Context, err error, _ bool) error { return usageError{err} }
	return c
}

func printJSON(w io.Writer, v any) error { return prune.WriteJSON(w, v) }

// isTerminal reports whether w is a terminal, for progress output.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// oneArg returns the single positional argument a command takes.
func oneArg(c *cli.Context, what string) (string, error) {
	if c.NArg() != 1 {
		return "", usagef("%s: expected one %s, got %d arguments", c.Command.Name, what, c.NArg())
	}
	return c.Args().First(), nil
}
