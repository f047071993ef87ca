"""Looking at checkpoints without changing them: inspect, diff (task-vector sizes, cosines, sign
conflicts), module types, the text reports and heat maps.
"""
