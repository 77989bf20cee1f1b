"Helpers shared by the test modules (importable because pytest puts this folder on sys.path)."

def cli(capsys, fn, *args):
    "Call a console-script function in-process: its exit status and stdout + stderr. Any other exception propagates."
    try: fn([str(a) for a in args]); code = 0
    except SystemExit as e: code = e.code
    cap = capsys.readouterr()
    return code, cap.out + cap.err
