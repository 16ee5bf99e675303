"""course_lib: the library of the course "Text Diffusion from Scratch".

One concept per module, introduced in notebook order:
env -> data -> model -> diffusion -> train -> sampling -> fast -> metrics -> roofline,
with bench, checkpoints, presets, checks and viz alongside. Import what you need, e.g.
`from course_lib import model`; nothing heavy is imported here.
"""

__version__ = "0.1.0"
