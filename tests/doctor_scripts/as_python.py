"""What the script sees of how it was run; exits with the code it is given."""
import os
import sys

print(f"name={__name__} argv={sys.argv[1:]} cwd={os.getcwd()} first_path={sys.path[0]}")
sys.exit(int(sys.argv[1]))
