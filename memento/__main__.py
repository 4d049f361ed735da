from memento.cli import app

app(prog_name="memento")
